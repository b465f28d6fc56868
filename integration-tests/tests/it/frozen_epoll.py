# A worker that makes every read of its epoll's /proc fdinfo wait for as long as it lives:
# the kernel holds the epoll's mutex while it copies a ready event to the caller's buffer, and
# the buffer here is a page of a userfaultfd that nobody serves. `check`: only whether this
# process may use a userfaultfd for kernel faults (root, or vm.unprivileged_userfaultfd=1).
import ctypes, fcntl, os, platform, select, struct, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.epoll_wait.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
NR = {"x86_64": 323, "aarch64": 282}[platform.machine()]
def iowr(nr, size):
    return (3 << 30) | (size << 16) | (0xAA << 8) | nr
uffd = libc.syscall(NR, os.O_CLOEXEC | os.O_NONBLOCK)
if uffd < 0:
    print("no userfaultfd:", os.strerror(ctypes.get_errno()), flush=True)
    sys.exit(3)
if sys.argv[1:] == ["check"]:
    sys.exit(0)
fcntl.ioctl(uffd, iowr(0x3F, 24), bytearray(struct.pack("QQQ", 0xAA, 0, 0)))
page = libc.mmap(None, 4096, 3, 0x22, -1, 0)
fcntl.ioctl(uffd, iowr(0x00, 32), bytearray(struct.pack("QQQQ", page, 4096, 1, 0)))
ep = select.epoll()
r, w = os.pipe()
os.write(w, b"x")
ep.register(r, select.EPOLLIN)
# epoll_wait copies the ready event into the registered page while it holds the epoll's
# mutex: the copy waits on the userfaultfd, which nobody serves, and the mutex stays held.
threading.Thread(target=lambda: libc.epoll_wait(ep.fileno(), page, 1, -1), daemon=True).start()
print("trapped epoll fd", ep.fileno(), flush=True)
time.sleep(600)
