/* The "shocker" container escape, reduced to its two calls: get a file handle for a file
 * on a mount that comes from the host (/etc/hosts in a RUN step), then open a file by
 * handle through it. With CAP_DAC_READ_SEARCH and no seccomp filter, open_by_handle_at
 * reaches any inode of the host's filesystem. Prints "opened" or "refused: <error>". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "/etc/hosts";
    struct file_handle *h = malloc(sizeof(*h) + MAX_HANDLE_SZ);
    int mount_id;
    h->handle_bytes = MAX_HANDLE_SZ;
    if (name_to_handle_at(AT_FDCWD, path, h, &mount_id, 0) != 0)
        printf("name_to_handle_at: %s\n", strerror(errno));
    int mount_fd = open(path, O_RDONLY);
    int fd = open_by_handle_at(mount_fd, h, O_RDONLY);
    if (fd < 0) {
        printf("refused: %s\n", strerror(errno));
        return 0;
    }
    printf("opened\n");
    return 0;
}
