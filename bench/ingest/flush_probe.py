#!/usr/bin/python3
"""What a group flush of instance files could gain on this disk (README, Durability).

Four writer threads store 520 KB files as firstread does (O_TMPFILE, write, linkat
under a new name, fsync), ROUNDS x 2 alternated runs of N files per thread each:
  own fsync:      every file its own fsync (firstread's durable path);
  one per round:  the four threads meet after linking and one of them fsyncs its
                  file for all four -- NOT durable for the other three: the upper
                  bound of any design sharing one flush among four instances.
Prints instances/s, median latency per file and the device's cache flushes per
file (/sys/block/<dev>/stat field 16; other processes' flushes count too).
Usage: /usr/bin/python3 bench/ingest/flush_probe.py [N=100] [ROUNDS=3] [DIR=/tmp]
"""
import ctypes, os, shutil, statistics, sys, tempfile, threading, time

AT_FDCWD, AT_SYMLINK_FOLLOW = -100, 0x400
libc = ctypes.CDLL(None, use_errno=True)
N = int(sys.argv[1]) if len(sys.argv) > 1 else 100
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
root = tempfile.mkdtemp(prefix='firstread-flush-probe-', dir=sys.argv[3] if len(sys.argv) > 3 else '/tmp')
data = b'\x5a' * 532480
st = os.stat(root)
stat_file = f'/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/stat'


def flushes():
    try:
        return int(open(stat_file).read().split()[15])
    except (OSError, IndexError):
        return 0


def new_file(directory, name):
    fd = os.open(root, os.O_TMPFILE | os.O_RDWR, 0o644)
    os.write(fd, data)
    # os.link() would link the /proc symlink itself: linkat with AT_SYMLINK_FOLLOW links the open file.
    if libc.linkat(AT_FDCWD, f'/proc/self/fd/{fd}'.encode(), AT_FDCWD, f'{directory}/{name}'.encode(),
                   AT_SYMLINK_FOLLOW) != 0:
        raise OSError(ctypes.get_errno(), f'linkat {directory}/{name}')
    return fd


def run(shared, tag):
    meet = threading.Barrier(4)
    latencies = []

    def writer(t):
        directory = f'{root}/{tag}-{t}'
        os.makedirs(directory)
        for i in range(N):
            t0 = time.perf_counter()
            fd = new_file(directory, f'{i}.dcm')
            if not shared:
                os.fsync(fd)
            elif meet.wait() == 0:
                os.fsync(fd)
            if shared:
                meet.wait()
            os.close(fd)
            latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    f0, t0 = flushes(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed, n = time.perf_counter() - t0, 4 * N
    print(f'{"one per round (bound)" if shared else "own fsync":22s} {n / elapsed:7.0f} inst/s, median latency '
          f'{statistics.median(latencies) * 1000:5.2f} ms, {(flushes() - f0) / n:.2f} flushes/inst', flush=True)


try:
    print(f'load before: {open("/proc/loadavg").read().strip()}')
    for r in range(ROUNDS):
        run(False, f'own{r}')
        run(True, f'shared{r}')
    print(f'load after: {open("/proc/loadavg").read().strip()}')
finally:
    shutil.rmtree(root)
