/* Two "hosts" on this machine (docs/distributed.md): two network namespaces joined by a veth
 * pair, Open MPI launched with a hostfile of their two addresses, its remote daemon started by
 * an rsh agent that enters the other namespace (instead of ssh), and every byte between the
 * ranks over TCP on the veth (--mca btl self,tcp, btl/oob_tcp_if_include). `nvlm run` at 2 such
 * hosts must print one process's answer and write its logits byte for byte, and the ranks must
 * really sit in the two namespaces. Needs root with CAP_NET_ADMIN (ip netns): skipped with a
 * message when that, MPI or mpirun is missing, or when NVLM_TEST_NETNS=0. */
#include "check.h"
#include "dist/dist.h"
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char ns[2][32], tmp[] = "/tmp/nvlm-test-netns-XXXXXX";
static int net; /* the second octet pair of 10.213.<net>.1/2 */

static void teardown(void) {
    for (int i = 0; i < 2; i++) check_sh("ip netns del %s >/dev/null 2>&1", ns[i]); /* the veth goes with them */
    check_sh("rm -rf %s", tmp);
}

/* The namespaces, the veth between them, the agent and the hostfile. 0, or -1 (skip). */
static int setup(void) {
    net = (int)(getpid() % 250) + 1;
    for (int i = 0; i < 2; i++) snprintf(ns[i], sizeof ns[i], "nvlm-t%d-%c", (int)getpid(), 'a' + i);
    if (check_sh("ip netns add %s 2>/dev/null && ip netns add %s 2>/dev/null", ns[0], ns[1])) return -1;
    int pid = (int)getpid();
    if (check_sh("ip link add nvt%da type veth peer name nvt%db && ip link set nvt%da netns %s && ip link set nvt%db netns %s && "
           "ip -n %s addr add 10.213.%d.1/24 dev nvt%da && ip -n %s addr add 10.213.%d.2/24 dev nvt%db && "
           "ip -n %s link set nvt%da up && ip -n %s link set nvt%db up && ip -n %s link set lo up && ip -n %s link set lo up",
           pid, pid, pid, ns[0], pid, ns[1], ns[0], net, pid, ns[1], net, pid, ns[0], pid, ns[1], pid, ns[0], ns[1]))
        return -1;
    if (!mkdtemp(tmp)) return -1;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/agent.sh", tmp);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    /* Open MPI's "ssh": agent [-options] HOST COMMAND...: COMMAND in HOST's namespace */
    fprintf(f, "#!/bin/sh\nwhile [ \"${1#-}\" != \"$1\" ]; do shift; done\nhost=$1; shift\n"
               "case $host in 10.213.%d.1) ns=%s;; 10.213.%d.2) ns=%s;; *) echo \"unknown host $host\" >&2; exit 1;; esac\n"
               "exec ip netns exec \"$ns\" /bin/sh -c \"$*\"\n", net, ns[0], net, ns[1]);
    fclose(f);
    snprintf(path, sizeof path, "%s/hosts", tmp);
    if (!(f = fopen(path, "w"))) return -1;
    fprintf(f, "10.213.%d.1 slots=1\n10.213.%d.2 slots=1\n", net, net);
    fclose(f);
    return check_sh("chmod +x %s/agent.sh", tmp) ? -1 : 0;
}

static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    static char buf[1 << 20];
    *n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[*n] = 0;
    char *c = malloc(*n + 1);
    if (c) memcpy(c, buf, *n + 1);
    return c;
}

int main(int argc, char **argv) {
    (void)argc;
    const char *opt = getenv("NVLM_TEST_NETNS");
    if (opt && !strcmp(opt, "0")) {
        printf("test_dist_netns: skipped (NVLM_TEST_NETNS=0)\n");
        return check_done("test_dist_netns");
    }
    if (!nvlm_dist_built() || system("command -v mpirun >/dev/null 2>&1 && command -v ip >/dev/null 2>&1")) {
        printf("test_dist_netns: skipped: no MPI in this build, or no mpirun or ip on PATH\n");
        return check_done("test_dist_netns");
    }
    char self[PATH_MAX], nvlm[PATH_MAX + 16];
    if (!realpath(argv[0], self)) snprintf(self, sizeof self, "%s", argv[0]);
    char *slash = strrchr(self, '/');
    if (slash) *slash = 0;
    snprintf(nvlm, sizeof nvlm, "%s/../nvlm", self);
    if (access(nvlm, X_OK)) {
        CHECK(0, "no nvlm binary at %s (make builds it beside the tests)", nvlm);
        return check_done("test_dist_netns");
    }
    if (setup()) {
        teardown();
        printf("test_dist_netns: skipped: cannot make network namespaces and a veth pair here (needs root with "
               "CAP_NET_ADMIN; NVLM_TEST_NETNS=0 skips quietly)\n");
        return check_done("test_dist_netns");
    }
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    setenv("ASAN_OPTIONS", "detect_leaks=0", 1);
    char model[PATH_MAX];
    if (!realpath(shared_path("reference/models/tiny-nvlm-d"), model)) snprintf(model, sizeof model, "missing");
    char mpi[2048];
    snprintf(mpi, sizeof mpi, "timeout 120 ip netns exec %s mpirun --hostfile %s/hosts -np 2 --map-by node "
             "--mca plm_rsh_agent %s/agent.sh --mca btl self,tcp --mca btl_tcp_if_include 10.213.%d.0/24 "
             "--mca oob_tcp_if_include 10.213.%d.0/24 -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM -x ASAN_OPTIONS",
             ns[0], tmp, tmp, net, net);
    /* the ranks sit in the two namespaces, each with its own address */
    int rc = check_sh("%s sh -c 'echo rank $OMPI_COMM_WORLD_RANK $(ip -br addr | grep -o \"10\\.213\\.%d\\.[12]\")' >%s/where 2>&1", mpi,
                net, tmp);
    char path[PATH_MAX], want[2][64];
    size_t n;
    snprintf(path, sizeof path, "%s/where", tmp);
    char *where = slurp(path, &n);
    snprintf(want[0], sizeof want[0], "rank 0 10.213.%d.1", net);
    snprintf(want[1], sizeof want[1], "rank 1 10.213.%d.2", net);
    /* This probe runs no nvlm code: if Open MPI cannot place its ranks here (a container that lets
     * us make namespaces but not run its daemon in them), that is the environment, not nvlm. */
    if (rc != 0) {
        if (where) where[strcspn(where, "\n")] = 0;
        printf("test_dist_netns: skipped: mpirun cannot start ranks in the two namespaces here (%s)\n",
               where && *where ? where : "no output");
        free(where);
        teardown();
        return check_done("test_dist_netns");
    }
    CHECK(where && strstr(where, want[0]) && strstr(where, want[1]), "the ranks are not one per namespace:\n%s",
          where ? where : "");
    free(where);
    /* nvlm run: one process, then 2 hosts over TCP on the veth */
    const char *args = "-p 'Describe a lighthouse.' -n 12 -t 1 -q";
    rc = check_sh("%s run --model %s %s --logits-out %s/one.bin >%s/one.txt 2>/dev/null", nvlm, model, args, tmp, tmp);
    CHECK(rc == 0, "nvlm run (one process) failed");
    rc = check_sh("%s %s run --model %s %s --logits-out %s/two.bin >%s/two.txt 2>%s/two.err", mpi, nvlm, model, args, tmp, tmp, tmp);
    snprintf(path, sizeof path, "%s/two.err", tmp);
    char *err = slurp(path, &n);
    CHECK(rc == 0, "nvlm run at 2 hosts failed:\n%s", err ? err : "");
    free(err);
    int same = 1;
    for (int k = 0; k < 2; k++) {
        char a[PATH_MAX], b[PATH_MAX];
        size_t na, nb;
        snprintf(a, sizeof a, "%s/one.%s", tmp, k ? "bin" : "txt");
        snprintf(b, sizeof b, "%s/two.%s", tmp, k ? "bin" : "txt");
        char *x = slurp(a, &na), *y = slurp(b, &nb);
        same &= x && y && na == nb && na > 0 && !memcmp(x, y, na);
        free(x), free(y);
    }
    CHECK(same, "nvlm run at 2 hosts (namespaces over a veth, TCP) answers or writes logits unlike one process");
    if (same) printf("  nvlm run at 2 hosts (2 network namespaces, a veth, Open MPI over TCP with a hostfile): one process's "
                     "answer and logits, byte for byte\n");
    teardown();
    return check_done("test_dist_netns");
}
