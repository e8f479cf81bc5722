/*
 * pbrec: the test guest's record writer.
 *
 * Writes record N (N = 1, 2, ...) as one 512-byte block to every disk named
 * on the command line, at RECORD_BASE + (N % capacity) * 512, then prints
 * "PBREC <N> <ms>" on stdout (the guest console) and sleeps.  A record is
 * printed only after it is durable on every disk (O_DIRECT|O_DSYNC), so any
 * record seen on the console must be in the disk image too.
 *
 * Record layout (little endian), read back by tests/rig/guest.py:
 *   0  magic "PBRECv1\0"      8  u64 seq        16 u64 guest CLOCK_REALTIME ms
 *   24 u64 run id             32 u32 disk index 36 zero padding
 *   508 u32 CRC-32 (zlib's) of bytes 0..507
 *
 * Usage: pbrec [-i interval_ms] [-n count] [-s first_seq] disk...
 * Without -i the interval comes from "pbrec_interval_ms=" on the kernel
 * command line, else 50 ms.  -n 0 (the default) runs forever.  The same
 * static binary runs on the host against raw image files.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define RECORD_SIZE 512
#define RECORD_BASE (1024 * 1024) /* the first MiB stays free for tests */
#define MAX_DISKS 26
#define DEFAULT_INTERVAL_MS 50

struct disk {
    const char *path;
    int fd;
    uint64_t capacity; /* record slots */
};

static uint32_t crc32(const unsigned char *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;

    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return ~c;
}

static uint64_t now_ms(clockid_t clock)
{
    struct timespec ts;

    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static long cmdline_interval(void)
{
    char buf[4096];
    const char *key = "pbrec_interval_ms=";
    FILE *f = fopen("/proc/cmdline", "r");
    size_t n;
    char *p;

    if (!f)
        return DEFAULT_INTERVAL_MS;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    for (p = strstr(buf, key); p; p = strstr(p + 1, key))
        if (p == buf || p[-1] == ' ')
            return strtol(p + strlen(key), NULL, 10);
    return DEFAULT_INTERVAL_MS;
}

static int open_disk(struct disk *d)
{
    struct stat st;
    uint64_t size = 0;

    /* O_DIRECT writes exactly one sector; fall back where it is refused
     * (tmpfs on the host), O_DSYNC still makes each write durable. */
    d->fd = open(d->path, O_WRONLY | O_DIRECT | O_DSYNC | O_CLOEXEC);
    if (d->fd < 0 && errno == EINVAL)
        d->fd = open(d->path, O_WRONLY | O_DSYNC | O_CLOEXEC);
    if (d->fd < 0 || fstat(d->fd, &st) < 0) {
        fprintf(stderr, "pbrec: %s: %s\n", d->path, strerror(errno));
        return -1;
    }
    if (S_ISBLK(st.st_mode)) {
        if (ioctl(d->fd, BLKGETSIZE64, &size) < 0)
            size = 0;
    } else {
        size = (uint64_t)st.st_size;
    }
    if (size < RECORD_BASE + RECORD_SIZE) {
        fprintf(stderr, "pbrec: %s: too small (%" PRIu64 " bytes)\n",
                d->path, size);
        return -1;
    }
    d->capacity = (size - RECORD_BASE) / RECORD_SIZE;
    return 0;
}

static void fill(unsigned char *b, uint64_t seq, uint64_t ms, uint64_t run,
                 uint32_t disk)
{
    uint32_t crc;

    memset(b, 0, RECORD_SIZE);
    memcpy(b, "PBRECv1", 8);
    memcpy(b + 8, &seq, 8);
    memcpy(b + 16, &ms, 8);
    memcpy(b + 24, &run, 8);
    memcpy(b + 32, &disk, 4);
    crc = crc32(b, RECORD_SIZE - 4);
    memcpy(b + RECORD_SIZE - 4, &crc, 4);
}

int main(int argc, char **argv)
{
    struct disk disks[MAX_DISKS];
    long interval = -1;
    uint64_t count = 0, seq = 1, run;
    unsigned char *buf;
    int ndisks = 0, opt;

    while ((opt = getopt(argc, argv, "i:n:s:")) != -1) {
        switch (opt) {
        case 'i': interval = strtol(optarg, NULL, 10); break;
        case 'n': count = strtoull(optarg, NULL, 10); break;
        case 's': seq = strtoull(optarg, NULL, 10); break;
        default:
            fprintf(stderr, "usage: pbrec [-i ms] [-n count] [-s seq] disk...\n");
            return 2;
        }
    }
    if (interval < 0)
        interval = cmdline_interval();
    for (; optind < argc && ndisks < MAX_DISKS; optind++) {
        disks[ndisks].path = argv[optind];
        if (open_disk(&disks[ndisks]) == 0)
            ndisks++;
    }
    if (ndisks == 0) {
        fprintf(stderr, "pbrec: no usable disk\n");
        return 1;
    }
    /* O_DIRECT needs an aligned buffer. */
    if (posix_memalign((void **)&buf, 4096, RECORD_SIZE) != 0)
        return 1;
    /* Tells one recorder run from another: a reboot changes it, a restore
     * of the guest's memory state does not. */
    run = (now_ms(CLOCK_REALTIME) << 16) ^ (uint64_t)getpid();
    printf("PBSTART run=%" PRIu64 " disks=%d interval_ms=%ld\n", run, ndisks,
           interval);
    fflush(stdout);

    for (uint64_t last = seq + count; count == 0 || seq < last; seq++) {
        uint64_t ms = now_ms(CLOCK_REALTIME);
        struct timespec pause = {interval / 1000, (interval % 1000) * 1000000L};

        for (int i = 0; i < ndisks; i++) {
            off_t off = RECORD_BASE +
                        (off_t)(seq % disks[i].capacity) * RECORD_SIZE;

            fill(buf, seq, ms, run, (uint32_t)i);
            /* Keep going on errors: a test sees the hole on the disk. */
            if (pwrite(disks[i].fd, buf, RECORD_SIZE, off) != RECORD_SIZE)
                printf("PBERR %" PRIu64 " %s %s\n", seq, disks[i].path,
                       strerror(errno));
        }
        printf("PBREC %" PRIu64 " %" PRIu64 "\n", seq, ms);
        fflush(stdout);
        if (interval > 0)
            nanosleep(&pause, NULL);
    }
    return 0;
}
