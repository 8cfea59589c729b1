/* crashshim: an LD_PRELOAD library that models a disk which loses everything not synced.
 *
 * Used by tests/test_locks_powercut.py (RELIABILITY L4/J2).  For the regular files directly
 * inside CRASHSHIM_DIR it records what a power cut would leave behind; the test applies that
 * record after it has SIGKILLed the process ("cuts the power").  The real files are never
 * touched.  Under CRASHSHIM_DURABLE the shim keeps
 *
 *   <name>@<inode>   an image: the content of that file as of its last sync (a file that
 *                    was unlinked keeps its image under <name>@<inode>~<n>, so that a new
 *                    file with the same name and inode number gets a fresh one);
 *   names            one image key per line: the directory as of its last sync.
 *
 * The model (strict POSIX): data is durable once a sync of its file (fsync, fdatasync)
 * returned; a name -- a creation or an unlink -- only once a sync of the directory returned.
 * After the cut a file exists iff it is in `names`, with the content of its image (empty if
 * it was never synced).  While a sync runs, the image is brought up to date in place, one
 * run of changed 512-byte sectors after the other: a cut in the middle keeps some of them,
 * as a real disk may.  sync()/syncfs() make the whole directory durable.
 *
 * Calls that promise no durability are not wrapped, on purpose: sync_file_range (no
 * metadata, no cache flush), msync (SQLite maps only the -shm, which is never durable),
 * O_SYNC writes.  A missed durable path can only make the model lose *more*, never hide a
 * loss.  (libsqlite3 imports only fdatasync of these: `nm -D libsqlite3.so.0`.)
 *
 * CRASHSHIM_KILL_AT=N: the process SIGKILLs itself at the start of its N-th sync of a
 * watched file or of the directory -- the moment the writes of a commit are in the page
 * cache and nothing of them is durable yet.  With CRASHSHIM_KILL_ON=<name> only the syncs
 * of that file count (locks.db: inside a checkpoint); with CRASHSHIM_KILL_AFTER=<name> only
 * the syncs after one of that file returned (locks.db: the WAL restart after a checkpoint).
 * CRASHSHIM_FAKE_SYNC=1: the shim is the disk; the real sync of a watched file is skipped.
 *
 * Not modelled: the parent directories of CRASHSHIM_DIR (assumed durable), rename, writes
 * torn inside a sector, reordering *across* syncs (a sync is a barrier), fsync errors,
 * disks that lie about syncs.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_syncfs)(int);
static void (*real_sync)(void);
static int (*real_unlink)(const char *);

static char watched[PATH_MAX];        /* realpath of CRASHSHIM_DIR; "" = inactive */
static char durable[1024];            /* short, so that every path below fits PATH_MAX */
static int fake;                      /* CRASHSHIM_FAKE_SYNC=1 */
static long kill_at;                  /* 0 = never */
static char kill_on[NAME_MAX + 1];    /* count only the syncs of this file */
static char kill_after[NAME_MAX + 1]; /* count only after a sync of this file returned */
static int armed;
static long syncs;                    /* syncs counted so far (atomic) */
static long retired;                  /* images of unlinked files (atomic) */

static void die(const char *what) {
    /* the model cannot be kept: better no result than a wrong one */
    fprintf(stderr, "crashshim: %s: %s\n", what, strerror(errno));
    abort();
}

static void env_copy(char *out, size_t size, const char *var) {
    const char *v = getenv(var);
    if (v != NULL && strlen(v) >= size) {
        errno = ENAMETOOLONG;
        die(var);
    }
    snprintf(out, size, "%s", v != NULL ? v : "");
}

__attribute__((constructor)) static void crashshim_init(void) {
    real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    real_syncfs = (int (*)(int))dlsym(RTLD_NEXT, "syncfs");
    real_sync = (void (*)(void))dlsym(RTLD_NEXT, "sync");
    real_unlink = (int (*)(const char *))dlsym(RTLD_NEXT, "unlink");
    const char *dir = getenv("CRASHSHIM_DIR");
    if (dir == NULL || getenv("CRASHSHIM_DURABLE") == NULL) return;
    if (realpath(dir, watched) == NULL) die("CRASHSHIM_DIR");   /* never run unwatched by mistake */
    env_copy(durable, sizeof durable, "CRASHSHIM_DURABLE");
    env_copy(kill_on, sizeof kill_on, "CRASHSHIM_KILL_ON");
    env_copy(kill_after, sizeof kill_after, "CRASHSHIM_KILL_AFTER");
    const char *k = getenv("CRASHSHIM_KILL_AT"), *f = getenv("CRASHSHIM_FAKE_SYNC");
    kill_at = k != NULL ? atol(k) : 0;
    fake = f != NULL && strcmp(f, "1") == 0;
}

/* Is path (a directory) the watched one? */
static int is_watched(const char *path) {
    char real[PATH_MAX];
    return realpath(path, real) != NULL && strcmp(real, watched) == 0;
}

/* 0: not watched; 1: a regular file directly in the watched dir (its name in name);
 * 2: the watched directory itself. */
static int classify(int fd, char *name, size_t size, struct stat *st) {
    char link[64], path[PATH_MAX];
    if (watched[0] == '\0' || fstat(fd, st) != 0) return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return 0;
    path[n] = '\0';
    const char *gone = " (deleted)";
    size_t glen = strlen(gone);
    if ((size_t)n > glen && strcmp(path + n - glen, gone) == 0) path[n - glen] = '\0';
    if (S_ISDIR(st->st_mode)) return strcmp(path, watched) == 0 ? 2 : 0;
    if (!S_ISREG(st->st_mode)) return 0;
    size_t wlen = strlen(watched);
    if (strncmp(path, watched, wlen) != 0 || path[wlen] != '/' || strchr(path + wlen + 1, '/') != NULL)
        return 0;
    snprintf(name, size, "%s", path + wlen + 1);
    return 1;
}

static void durable_path(char *out, size_t size, const char *key) {
    snprintf(out, size, "%s/%s", durable, key);
}

static void tmp_path(char *out, size_t size) {
    snprintf(out, size, "%s/.tmp-%d-%ld", durable, getpid(), (long)syscall(SYS_gettid));
}

static size_t read_full(int fd, char *buf, size_t n, off_t off) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, buf + got, n - got, off + (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) die("pread");
        if (r == 0) break;
        got += (size_t)r;
    }
    return got;
}

static void write_full(int fd, const char *buf, size_t n, off_t off) {
    while (n > 0) {
        ssize_t w = pwrite(fd, buf, n, off);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) die("pwrite");
        buf += w, n -= (size_t)w, off += w;
    }
}

/* Bring the image `key` up to the current content of fd's file: only the 512-byte sectors
 * that differ are written, in place, in file order. */
static void patch_image(int fd, const char *key) {
    enum { CHUNK = 1 << 16, SECTOR = 512 };
    char link[64], image[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    int in = open(link, O_RDONLY | O_CLOEXEC);      /* own offset: the caller's is untouched */
    if (in < 0) die("reopen");
    durable_path(image, sizeof image, key);
    int out = open(image, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (out < 0) die(image);
    char *a = malloc(CHUNK), *b = malloc(CHUNK);
    if (a == NULL || b == NULL) die("malloc");
    off_t off = 0;
    for (;;) {
        size_t n = read_full(in, a, CHUNK, off), m = read_full(out, b, n, off);
        if (m < n || memcmp(a, b, n) != 0) {
            for (size_t s = 0; s < n;) {            /* write each run of differing sectors */
                size_t e = s, len = 0;
                for (; e < n; e += len) {
                    len = n - e < SECTOR ? n - e : SECTOR;
                    if (e + len <= m && memcmp(a + e, b + e, len) == 0) break;
                }
                if (e > s) write_full(out, a + s, e - s, off + (off_t)s);
                s = e < n ? e + len : e;
            }
        }
        off += (off_t)n;
        if (n < CHUNK) break;
    }
    struct stat st;
    if (fstat(out, &st) != 0) die("fstat");
    if (st.st_size > off && ftruncate(out, off) != 0) die("ftruncate");
    free(a);
    free(b);
    close(in);
    if (close(out) != 0) die("close");
}

static void publish(const char *tmp, const char *final) {
    if (rename(tmp, final) != 0) die("rename");
}

/* The keys of the regular files now in the watched dir, written to a temporary file. */
static void list_out(char *tmp, size_t size) {
    DIR *d = opendir(watched);
    if (d == NULL) die("opendir");
    tmp_path(tmp, size);
    FILE *out = fopen(tmp, "we");
    if (out == NULL) die(tmp);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode))
            fprintf(out, "%s@%lu\n", e->d_name, (unsigned long)st.st_ino);
    }
    closedir(d);
    if (fclose(out) != 0) die("fclose");
}

static void maybe_die(const char *name) {     /* name: the file about to be synced; "" the dir */
    if (kill_at <= 0 || (kill_on[0] != '\0' && strcmp(name, kill_on) != 0)) return;
    if (kill_after[0] != '\0' && !__atomic_load_n(&armed, __ATOMIC_SEQ_CST)) return;
    if (__atomic_add_fetch(&syncs, 1, __ATOMIC_SEQ_CST) == kill_at) raise(SIGKILL);
}

static int wrapped(int fd, int (*real)(int)) {
    char name[NAME_MAX + 1], key[NAME_MAX + 32], tmp[PATH_MAX], final[PATH_MAX];
    struct stat st;
    int saved = errno;
    int kind = classify(fd, name, sizeof name, &st);
    errno = saved;
    if (kind == 0) return real(fd);
    maybe_die(kind == 1 ? name : "");
    if (kind == 1) {                               /* durable while the sync runs */
        snprintf(key, sizeof key, "%s@%lu", name, (unsigned long)st.st_ino);
        patch_image(fd, key);
        errno = saved;
        int rc = fake ? 0 : real(fd);
        if (rc == 0 && kill_after[0] != '\0' && strcmp(name, kill_after) == 0)
            __atomic_store_n(&armed, 1, __ATOMIC_SEQ_CST);
        return rc;
    }
    list_out(tmp, sizeof tmp);                     /* the names: all at once, when it returned */
    durable_path(final, sizeof final, "names");
    errno = saved;
    int rc = fake ? 0 : real(fd);
    saved = errno;
    if (rc == 0) publish(tmp, final);
    else unlink(tmp);
    errno = saved;
    return rc;
}

int fsync(int fd) { return wrapped(fd, real_fsync); }
int fdatasync(int fd) { return wrapped(fd, real_fdatasync); }

/* A watched file was unlinked: move its image to a key of its own (and say so in `names`,
 * where the unlink is not durable yet), so that a new file with the same name and inode
 * number starts with no image. */
static void retire(const char *name, ino_t ino) {
    char key[NAME_MAX + 32], old[PATH_MAX], new[PATH_MAX], names[PATH_MAX], tmp[PATH_MAX], line[PATH_MAX];
    snprintf(key, sizeof key, "%s@%lu", name, (unsigned long)ino);
    durable_path(old, sizeof old, key);
    long n = __atomic_add_fetch(&retired, 1, __ATOMIC_SEQ_CST);
    char moved[NAME_MAX + 64];
    snprintf(moved, sizeof moved, "%s~%d-%ld", key, getpid(), n);
    durable_path(new, sizeof new, moved);
    if (rename(old, new) != 0) {
        if (errno == ENOENT) return;               /* never synced: no image */
        die("rename");
    }
    durable_path(names, sizeof names, "names");
    FILE *in = fopen(names, "re");
    if (in == NULL) return;                        /* no names yet: nothing refers to it */
    tmp_path(tmp, sizeof tmp);
    FILE *out = fopen(tmp, "we");
    if (out == NULL) die(tmp);
    while (fgets(line, sizeof line, in) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        fprintf(out, "%s\n", strcmp(line, key) == 0 ? moved : line);
    }
    fclose(in);
    if (fclose(out) != 0) die("fclose");
    publish(tmp, names);
}

int unlink(const char *path) {
    struct stat st;
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    int saved = errno;
    if (watched[0] == '\0' || lstat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
        errno = saved;
        return real_unlink(path);
    }
    if (slash == NULL) snprintf(dir, sizeof dir, ".");
    else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path == 0 ? 1 : slash - path), path);
    int mine = is_watched(dir);
    errno = saved;
    int rc = real_unlink(path);
    if (rc == 0 && mine) {
        saved = errno;
        retire(slash == NULL ? path : slash + 1, st.st_ino);
        errno = saved;
    }
    return rc;
}

/* Everything in the watched dir becomes durable: every file's content and every name. */
static void snapshot_all(void) {
    DIR *d = opendir(watched);
    if (d == NULL) die("opendir");
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        struct stat st;
        char key[NAME_MAX + 32];
        int fd = openat(dirfd(d), e->d_name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) continue;
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
            snprintf(key, sizeof key, "%s@%lu", e->d_name, (unsigned long)st.st_ino);
            patch_image(fd, key);
        }
        close(fd);
    }
    closedir(d);
    char tmp[PATH_MAX], final[PATH_MAX];
    list_out(tmp, sizeof tmp);
    durable_path(final, sizeof final, "names");
    publish(tmp, final);
}

/* Made durable before the real call: a cut during a sync may keep any part of what it writes. */
int syncfs(int fd) {
    if (watched[0] != '\0') {
        int saved = errno;
        maybe_die("");
        snapshot_all();
        errno = saved;
    }
    return real_syncfs(fd);
}

void sync(void) {
    if (watched[0] != '\0') {
        int saved = errno;
        maybe_die("");
        snapshot_all();
        errno = saved;
    }
    real_sync();
}
