/*
 * /init for the guest boot check (tests/guest/boot-check.sh): mounts what
 * husk-agent will mount, checks that the guest kernel has every feature husk
 * relies on, prints "HUSK-GUEST-CHECK OK" or "HUSK-GUEST-CHECK FAILED: ...",
 * then ends the VM.
 *
 * Optional checks are switched on by words on the kernel command line:
 *   husk_check=virtio-blk   expect a virtio-mmio block device (vda)
 *   husk_check=virtio-net   expect a virtio-mmio NIC (eth0) with MAC
 *                           52:54:00:12:34:56 and the host's MTU 1400
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static int failures;

static void fail(const char *what, const char *detail)
{
	failures++;
	printf("husk-check: FAIL %s: %s\n", what, detail);
}

static void pass(const char *what)
{
	printf("husk-check: ok %s\n", what);
}

static void do_mount(const char *src, const char *dir, const char *type, unsigned long flags)
{
	mkdir(dir, 0755);
	if (mount(src, dir, type, flags, NULL) != 0)
		fail(dir, strerror(errno));
}

/* Reads a small file whole into buf (NUL-terminated); returns 0 on success. */
static int read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t len = 0;
	ssize_t n;

	if (fd < 0)
		return -1;
	while (len + 1 < size && (n = read(fd, buf + len, size - 1 - len)) > 0)
		len += (size_t)n;
	close(fd);
	buf[len] = '\0';
	return 0;
}

/* Whether word appears in text as a whole whitespace-separated token. */
static int has_word(const char *text, const char *word)
{
	size_t wlen = strlen(word);
	const char *p = text;

	while ((p = strstr(p, word)) != NULL) {
		int starts = p == text || strchr(" \t\n", p[-1]) != NULL;
		int ends = p[wlen] == '\0' || strchr(" \t\n", p[wlen]) != NULL;

		if (starts && ends)
			return 1;
		p += wlen;
	}
	return 0;
}

static void check_words(const char *what, const char *path, const char *const *words)
{
	static char buf[8192];
	int missing = 0;

	if (read_file(path, buf, sizeof(buf)) != 0) {
		fail(what, strerror(errno));
		return;
	}
	for (; *words; words++) {
		if (!has_word(buf, *words)) {
			fail(what, *words);
			missing++;
		}
	}
	if (!missing)
		pass(what);
}

static void check_exists(const char *what, const char *const *paths)
{
	struct stat st;
	int missing = 0;

	for (; *paths; paths++) {
		if (stat(*paths, &st) != 0) {
			fail(what, *paths);
			missing++;
		}
	}
	if (!missing)
		pass(what);
}

static void check_vsock(void)
{
	int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	unsigned int cid = 0;

	if (fd < 0) {
		fail("vsock socket", strerror(errno));
		return;
	}
	close(fd);
	/* /dev/vsock answers the local CID once a transport is registered. */
	fd = open("/dev/vsock", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		if (ioctl(fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid) == 0)
			printf("husk-check: vsock local cid %u\n", cid);
		close(fd);
	}
	pass("vsock socket");
}

static void check_seccomp(void)
{
	/* PR_GET_SECCOMP fails with EINVAL when seccomp is not built in. */
	if (prctl(PR_GET_SECCOMP, 0, 0, 0, 0) < 0) {
		fail("seccomp", strerror(errno));
		return;
	}
	const char *const filter[] = { "/proc/sys/kernel/seccomp/actions_avail", NULL };
	check_exists("seccomp filter", filter);
}

static void check_clock(void)
{
	time_t now = time(NULL);

	printf("husk-check: wall clock %lld\n", (long long)now);
	/* 2020-01-01: the RTC was read, the clock does not start at 1970. */
	if (now < 1577836800)
		fail("wall clock", "before 2020");
	else
		pass("wall clock");
}

static void check_virtio_blk(void)
{
	static char buf[64];

	if (read_file("/sys/block/vda/device/device", buf, sizeof(buf)) != 0) {
		fail("virtio-mmio block device", "no /sys/block/vda");
		return;
	}
	if (strtoul(buf, NULL, 0) != 2) {
		fail("virtio-mmio block device", "vda is not virtio device id 2");
		return;
	}
	pass("virtio-mmio block device vda");
}

static void check_virtio_net(void)
{
	static char buf[64];

	if (read_file("/sys/class/net/eth0/device/device", buf, sizeof(buf)) != 0) {
		fail("virtio-mmio NIC", "no /sys/class/net/eth0");
		return;
	}
	if (strtoul(buf, NULL, 0) != 1) {
		fail("virtio-mmio NIC", "eth0 is not virtio device id 1");
		return;
	}
	if (read_file("/sys/class/net/eth0/address", buf, sizeof(buf)) != 0 ||
	    strncmp(buf, "52:54:00:12:34:56", 17) != 0) {
		fail("virtio-mmio NIC", "eth0 does not have the MAC the device gave");
		return;
	}
	/* VIRTIO_NET_F_MTU: the guest takes the host's MTU (husk passes the
	 * container link's MTU this way). */
	if (read_file("/sys/class/net/eth0/mtu", buf, sizeof(buf)) != 0 ||
	    strtoul(buf, NULL, 10) != 1400) {
		fail("virtio-mmio NIC", "eth0 does not have the host's MTU 1400");
		return;
	}
	pass("virtio-mmio NIC eth0");
}

/* IPv4 and IPv6 sockets: containers listen on 0.0.0.0 and [::]. */
static void check_inet(void)
{
	int fd4 = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	int fd6 = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (fd4 < 0 || fd6 < 0)
		fail("inet sockets", strerror(errno));
	else
		pass("inet and inet6 sockets");
	if (fd4 >= 0)
		close(fd4);
	if (fd6 >= 0)
		close(fd6);
}

int main(void)
{
	static const char *const filesystems[] = { "virtiofs", "fuse", "cgroup2", "tmpfs",
						   "devpts", "mqueue", "proc", "sysfs",
						   "devtmpfs", "hugetlbfs", NULL };
	static const char *const controllers[] = { "cpu", "cpuset", "io", "memory",
						   "hugetlb", "pids", NULL };
	static const char *const namespaces[] = { "/proc/self/ns/uts", "/proc/self/ns/ipc",
						  "/proc/self/ns/pid", "/proc/self/ns/net",
						  "/proc/self/ns/user", "/proc/self/ns/cgroup",
						  "/proc/self/ns/time", NULL };
	static char cmdline[4096], uptime[64];
	struct utsname uts;

	setvbuf(stdout, NULL, _IONBF, 0);
	printf("husk-check: started\n");

	do_mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC);
	do_mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC);
	do_mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID);
	do_mount("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC);
	do_mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV);
	do_mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC);
	do_mount("mqueue", "/dev/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC);

	if (uname(&uts) == 0)
		printf("husk-check: kernel %s %s %s\n", uts.sysname, uts.release, uts.machine);
	else
		fail("uname", strerror(errno));
	if (read_file("/proc/cmdline", cmdline, sizeof(cmdline)) != 0)
		fail("/proc/cmdline", strerror(errno));
	printf("husk-check: cpus online %ld\n", sysconf(_SC_NPROCESSORS_ONLN));

	check_words("filesystems", "/proc/filesystems", filesystems);
	check_words("cgroup controllers", "/sys/fs/cgroup/cgroup.controllers", controllers);
	/* The root cgroup has no cpu.max or io.max: enable the controllers for
	 * a child and look for the files that need CFS bandwidth, io
	 * throttling and the v2 freezer. */
	if (mkdir("/sys/fs/cgroup/check", 0755) == 0 || errno == EEXIST) {
		int fd = open("/sys/fs/cgroup/cgroup.subtree_control", O_WRONLY | O_CLOEXEC);

		if (fd < 0 || write(fd, "+cpu +memory +pids +io +cpuset", 30) < 0)
			fail("cgroup subtree_control", strerror(errno));
		if (fd >= 0)
			close(fd);
		const char *const child[] = { "/sys/fs/cgroup/check/cpu.max",
					      "/sys/fs/cgroup/check/memory.max",
					      "/sys/fs/cgroup/check/pids.max",
					      "/sys/fs/cgroup/check/io.max",
					      "/sys/fs/cgroup/check/cgroup.freeze", NULL };
		check_exists("cgroup child files", child);
	} else {
		fail("cgroup mkdir", strerror(errno));
	}
	check_exists("namespaces", namespaces);
	check_vsock();
	check_seccomp();
	check_clock();
	check_inet();
	if (has_word(cmdline, "husk_check=virtio-blk"))
		check_virtio_blk();
	if (has_word(cmdline, "husk_check=virtio-net"))
		check_virtio_net();

	if (read_file("/proc/uptime", uptime, sizeof(uptime)) == 0)
		printf("husk-check: uptime %s", uptime);
	if (failures)
		printf("HUSK-GUEST-CHECK FAILED: %d check(s)\n", failures);
	else
		printf("HUSK-GUEST-CHECK OK\n");

	sync();
	/*
	 * Without ACPI the kernel has no power-off method: RB_POWER_OFF halts
	 * the vCPUs forever and the VM never ends. A restart with reboot=t (triple
	 * fault) or reboot=k (i8042) is what ends a microVM: QEMU -no-reboot
	 * exits on it, a KVM VMM sees KVM_EXIT_SHUTDOWN or the i8042 reset.
	 */
	reboot(RB_AUTOBOOT);
	printf("husk-check: reboot: %s\n", strerror(errno));
	return 1;
}
