/* Lists the identities of the SSH agent at $SSH_AUTH_SOCK (the agent protocol's
 * SSH_AGENTC_REQUEST_IDENTITIES, 5 bytes), for the RUN --mount=type=ssh tests: prints
 * "type=<reply type> keys=<count>" and then each key's comment on its own line.
 * Built static (gcc -static) so it runs in a busybox image. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int read_all(int fd, unsigned char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

static uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

int main(void) {
    const char *path = getenv("SSH_AUTH_SOCK");
    if (!path) { fprintf(stderr, "SSH_AUTH_SOCK is not set\n"); return 2; }
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = {0};
    addr.sun_family = AF_UNIX;
    strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) { perror("connect"); return 3; }
    const unsigned char req[5] = {0, 0, 0, 1, 11};
    if (write(fd, req, 5) != 5) { perror("write"); return 4; }
    unsigned char hdr[4];
    if (read_all(fd, hdr, 4)) { fprintf(stderr, "short reply\n"); return 5; }
    uint32_t len = be32(hdr);
    if (len == 0 || len > (1u << 20)) { fprintf(stderr, "bad length %u\n", len); return 6; }
    unsigned char *body = malloc(len);
    if (read_all(fd, body, len)) { fprintf(stderr, "short body\n"); return 7; }
    uint32_t keys = len >= 5 ? be32(body + 1) : 0;
    printf("type=%u keys=%u\n", body[0], keys);
    size_t off = 5;
    for (uint32_t i = 0; i < keys && off + 4 <= len; i++) {
        uint32_t blob = be32(body + off);
        off += 4 + blob;
        if (off + 4 > len) break;
        uint32_t clen = be32(body + off);
        off += 4;
        if (off + clen > len) break;
        printf("%.*s\n", (int)clen, body + off);
        off += clen;
    }
    return 0;
}
