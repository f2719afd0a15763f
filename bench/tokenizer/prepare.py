#!/usr/bin/env python3
"""Writes the benchmark texts to OUTDIR from files every Debian machine has: English prose
(license texts, git release notes), C source (/usr/include), CJK (Japanese and Korean
manual pages), and a 1 MB document. Paragraph sets hold texts separated by \\x1e."""
import glob, gzip, os, re, sys

out = sys.argv[1]
os.makedirs(out, exist_ok=True)

def paragraphs(text, lo=200, hi=1500):
    res, cur = [], ''
    for p in re.split(r'\n\s*\n', text):
        cur = (cur + '\n\n' + p) if cur else p
        if len(cur.encode()) >= lo:
            res.append(cur[:hi])
            cur = ''
    return res

def read(path):
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rt', encoding='utf-8', errors='replace') as f:
        return f.read()

prose_files = sorted(glob.glob('/usr/share/common-licenses/*')) + sorted(glob.glob('/usr/share/doc/git/RelNotes/*.txt'))
prose = [p for f in prose_files if os.path.isfile(f) for p in paragraphs(read(f))][:2000]
code = []
for f in sorted(glob.glob('/usr/include/*.h')):
    lines = read(f).split('\n')
    code += ['\n'.join(lines[i:i + 30]) for i in range(0, len(lines), 30) if len('\n'.join(lines[i:i + 30])) > 200]
code = code[:2000]
cjk = []
for f in sorted(glob.glob('/usr/share/man/ja/man*/*.gz')) + sorted(glob.glob('/usr/share/man/ko/man*/*.gz')) + sorted(glob.glob('/usr/share/man/zh_*/man*/*.gz')):
    text = '\n'.join(l for l in read(f).split('\n') if not l.startswith('.') and not l.startswith("'"))
    cjk += [p for p in paragraphs(text) if sum(ord(c) > 0x2E80 for c in p) > len(p) // 3]
cjk = cjk[:2000]
doc = ''
for f in prose_files:
    doc += read(f) + '\n'
    if len(doc.encode()) >= 1 << 20:
        break
doc = doc.encode()[:1 << 20].decode('utf-8', 'ignore')

for name, items in (('prose', prose), ('code', code), ('cjk', cjk)):
    with open(os.path.join(out, name + '.txt'), 'w', encoding='utf-8') as f:
        f.write('\x1e'.join(items))
    print(f'{name}: {len(items)} paragraphs, {sum(len(x.encode()) for x in items)} bytes')
with open(os.path.join(out, 'doc1mb.txt'), 'w', encoding='utf-8') as f:
    f.write(doc)
print(f'doc1mb: {len(doc.encode())} bytes')
