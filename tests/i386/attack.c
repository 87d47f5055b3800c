/*
 * systrace-i386: the bypass suite's attacks as a 32-bit program, which the
 * kernel serves through its compat system-call entry (int 0x80 and the ia32
 * tables), not the 64-bit one. Built static with `gcc -m32` by `cargo xtask`.
 *
 *   systrace-i386 CGROUP_DIR open PATH | exec PATH | connect ADDRESS PORT
 *
 * Joins the cgroup, makes the one call, and prints what the `op` workload
 * prints: {"pid":..,"tgid":..,"comm":..,"errno":..}.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: systrace-i386 CGROUP_DIR open PATH | exec PATH | connect ADDRESS PORT\n");
        return 2;
    }
    int pid = getpid();
    char procs[512];
    snprintf(procs, sizeof procs, "%s/cgroup.procs", argv[1]);
    int fd = open(procs, O_WRONLY);
    if (fd < 0 || dprintf(fd, "%d", pid) < 0) {
        perror("joining the cgroup");
        return 1;
    }
    close(fd);
    const char *verb = argv[2];
    int err = 0;
    if (strcmp(verb, "open") == 0) {
        int f = open(argv[3], O_RDONLY);
        err = f < 0 ? errno : 0;
    } else if (strcmp(verb, "exec") == 0) {
        char *args[] = {"true", NULL};
        execv(argv[3], args);
        err = errno;
    } else if (strcmp(verb, "connect") == 0 && argc >= 5) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa;
        memset(&sa, 0, sizeof sa);
        sa.sin_family = AF_INET;
        sa.sin_port = htons((unsigned short)atoi(argv[4]));
        inet_pton(AF_INET, argv[3], &sa.sin_addr);
        err = connect(s, (struct sockaddr *)&sa, sizeof sa) < 0 ? errno : 0;
    } else {
        fprintf(stderr, "unknown operation %s\n", verb);
        return 2;
    }
    printf("{\"pid\":%d,\"tgid\":%d,\"comm\":\"systrace-i386\",\"errno\":%d}\n", pid, pid, err);
    return 0;
}
