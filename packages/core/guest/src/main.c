/*
 * hypeman-init: PID 1 of every hypeman guest. Boots the image (README.md, "Boot sequence"), runs its
 * program, reports what happened on hypeman.status, serves graceful stop on hypeman.control and the
 * ACPI power button, forks the agent, and powers the VM off when the program ends.
 *
 * Run on the host with a subcommand it exposes pure pieces for tests: parse-config, resolve-user,
 * render-etc, mount-target, apply-egress (the last two act on "/": run them under chroot).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/input.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "boot.h"
#include "config.h"
#include "egress.h"
#include "etc.h"
#include "files.h"
#include "headers.h"
#include "net.h"
#include "spawn.h"
#include "status.h"
#include "template.h"
#include "user.h"
#include "util.h"
#include "volumes.h"

#define PORT_STATUS "hypeman.status"
#define PORT_APP "hypeman.app"
#define PORT_CONTROL "hypeman.control"
#define PORT_AGENT "hypeman.agent"
#define DISK_CONFIG "hm-config"
#define DISK_ROOTFS "hm-rootfs"
/* The host names it in the config too; a template knows it is attached from its flags. */
#define DISK_HEADERS "hm-headers"
#define DISK_OVERLAY "hm-overlay"
#define PORT_WAIT_MS 3000
#define DISK_WAIT_MS 3000
/* virtio device type of a SCSI host (virtio spec, "Device Types"), as sysfs writes it. */
#define VIRTIO_ID_SCSI "0x0008"
#define NIC_WAIT_MS 3000
#define LINK_WAIT_MS 5000
#define MAX_AGENT_RESTARTS 5
#define MAX_INPUTS 8

static struct {
	struct guest_config cfg;
	int sfd;
	pid_t main_pid, agent_pid;
	int main_running;
	int agent_restarts;
	int agent_pending; /* replaced by `identity`: the new one starts once the host has its reply */
	char agent_dev[64];
	char cfgdev[64]; /* the config disk, read again by `identity` */
	char ifname[32]; /* the configured NIC */
	uint64_t oom_before;
	int stopping, grace_over;
	uint64_t stop_deadline;
	int ctrl, ctrl_connected;
	int overlay_fd; /* the writable disk's mount, hidden after the switch: remounted read-only at power off */
	struct module_set scsi; /* the SCSI driver, opened and not loaded: the agent loads it at the first hot mount */
	struct buf ctrl_rx;
	int inputs[MAX_INPUTS];
	int ninputs, inputs_opened;
} I = {.ctrl = -1, .overlay_fd = -1};

static void power_off(void) __attribute__((noreturn));
static void power_off(void)
{
	/* Everything but us: the program's leftovers, the agent and its sessions. */
	kill(-1, SIGKILL);
	uint64_t deadline = monotonic_ms() + 2000;
	while (monotonic_ms() < deadline) {
		pid_t p = waitpid(-1, NULL, WNOHANG);
		if (p < 0 && errno == ECHILD)
			break;
		if (p == 0)
			usleep(5000);
	}
	sync();
	/* A read-only remount leaves the writable disk's journal clean: the next boot skips recovery. */
	if (I.overlay_fd >= 0) {
		char path[64];
		snprintf(path, sizeof path, "/proc/self/fd/%d", I.overlay_fd);
		mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL);
		if (mount(NULL, path, NULL, MS_REMOUNT | MS_RDONLY, NULL) < 0)
			logmsg("remount overlay disk read-only: %s", strerror(errno));
	}
	volumes_quiesce(&I.cfg);
	reboot(RB_POWER_OFF);
	reboot(RB_AUTOBOOT); /* no ACPI poweroff: with the VMM's -no-reboot this ends it too */
	for (;;)
		pause();
}

/* `hypeman.rescue` on the kernel command line: a failed boot drops to a shell on the console. */
static void rescue_shell(void)
{
	char cmdline[4096];
	if (read_small_file("/proc/cmdline", cmdline, sizeof cmdline) < 0 || !strstr(cmdline, "hypeman.rescue"))
		return;
	logmsg("rescue shell on the console; exit it to power off");
	pid_t pid = fork();
	if (pid == 0) {
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		execl("/bin/sh", "sh", (char *)NULL);
		_exit(127);
	}
	while (pid > 0 && waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
	}
}

static void fail(const char *step, const char *message) __attribute__((noreturn));
static void fail(const char *step, const char *message)
{
	logmsg("%s: %s", step, message);
	status_error(step, message);
	rescue_shell();
	power_off();
}

static uint64_t oom_kills(void)
{
	static char buf[16384];
	if (read_small_file("/proc/vmstat", buf, sizeof buf) < 0)
		return 0;
	const char *p = strstr(buf, "\noom_kill ");
	uint64_t v = 0;
	if (p) {
		p += 10;
		while (*p >= '0' && *p <= '9')
			v = v * 10 + (uint64_t)(*p++ - '0');
	}
	return v;
}

static void main_exited(int status)
{
	I.main_running = 0;
	/* The kernel counts every OOM kill; one during the program's life that ended it by SIGKILL is the OOM
	 * killer's doing, not a guess from the signal alone. */
	int killed = (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) ||
		     (WIFEXITED(status) && WEXITSTATUS(status) == 128 + SIGKILL);
	int oom = killed && oom_kills() > I.oom_before;
	int code, signo;
	char msg[256];
	describe_exit(status, oom, &code, &signo, msg, sizeof msg);
	status_exited(code, signo, oom, msg);
	power_off();
}

static void start_agent(void)
{
	pid_t pid = fork();
	if (pid == 0)
		agent_main(I.agent_dev, &I.cfg, I.scsi.n > 0 ? &I.scsi : NULL);
	if (pid < 0)
		logmsg("cannot fork the agent: %s", strerror(errno));
	I.agent_pid = pid;
}

static void begin_stop(const char *reason, uint64_t grace_ms)
{
	if (I.stopping || !I.main_running)
		return;
	if (grace_ms > 86400000)
		grace_ms = 86400000; /* a day: keeps the deadline arithmetic far from overflow */
	I.stopping = 1;
	status_stopping(reason, grace_ms);
	I.stop_deadline = monotonic_ms() + grace_ms;
	kill(I.main_pid, grace_ms ? SIGTERM : SIGKILL);
}

static void reap(void)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		if (pid == I.main_pid && I.main_running) {
			main_exited(status);
		} else if (pid == I.agent_pid) {
			I.agent_pid = 0;
			logmsg("agent exited (status %d)", status);
			if (I.agent_restarts++ < MAX_AGENT_RESTARTS)
				start_agent();
		}
	}
}

static void ctrl_reply(const char *line)
{
	if (I.ctrl >= 0)
		(void)write(I.ctrl, line, strlen(line));
}

static void set_async(int fd, int on)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0)
		fcntl(fd, F_SETFL, on ? fl | O_ASYNC : fl & ~O_ASYNC);
}

static void ctrl_probe(void)
{
	struct pollfd p = {.fd = I.ctrl, .events = POLLIN};
	if (I.ctrl >= 0 && poll(&p, 1, 0) >= 0 && !(p.revents & POLLHUP)) {
		I.ctrl_connected = 1;
		set_async(I.ctrl, 0);
	}
}

static void ctrl_disconnected(void)
{
	I.ctrl_connected = 0;
	I.ctrl_rx.len = 0;
	set_async(I.ctrl, 1);
}

static int network_files(const struct guest_config *cfg, char *err, size_t cap);

/*
 * A fork restored from its source's snapshot becomes itself: the host's clock and entropy, then
 * the fork's own config disk (its MAC, address, hostname, machine-id, env for new processes). The
 * processes that run keep what they had; the agent restarts with the new config.
 */
static int reidentify(const char *args, char *err, size_t cap)
{
	struct guest_config nc;
	if (reseed_from_host(args, err, cap) < 0 || drop_block_cache(I.cfgdev, err, cap) < 0 || config_load(I.cfgdev, &nc, err, cap) < 0)
		return -1;
	if (nc.net.enabled != I.cfg.net.enabled) {
		snprintf(err, cap, "a fork cannot gain or lose its network");
		return -1;
	}
	if (nc.net.enabled) {
		if (net_set_mac(I.ifname, nc.net.mac, err, cap) < 0)
			return -1;
		if (strcmp(nc.net.address, I.cfg.net.address) != 0 && net_del_address(I.ifname, I.cfg.net.address, I.cfg.net.prefix_len, err, cap) < 0)
			return -1;
		char ifname[32];
		if (net_configure(&nc.net, NIC_WAIT_MS, LINK_WAIT_MS, ifname, sizeof ifname, err, cap) < 0 || network_files(&nc, err, cap) < 0)
			return -1;
		net_close();
	}
	if (sethostname(nc.hostname, strlen(nc.hostname)) < 0) {
		snprintf(err, cap, "set hostname: %s", strerror(errno));
		return -1;
	}
	if (nc.machine_id && write_machine_id(nc.machine_id, err, cap) < 0)
		return -1;
	nc.skip_agent = I.cfg.skip_agent;
	I.cfg = nc;
	/* The old agent ends before the host hears `ok`: a host message it had received but not read
	 * would be lost with it (the port drops unread data on close). With the port closed, what the
	 * host sends waits in the VMM for the new agent, started after the reply (agent_pending). */
	if (I.agent_pid > 0) {
		kill(I.agent_pid, SIGKILL);
		while (waitpid(I.agent_pid, NULL, 0) < 0 && errno == EINTR) {
		}
		I.agent_pid = 0;
		I.agent_pending = 1;
	}
	return 0;
}

/* One command per line: "stop <grace-ms>", "signal <n>", "ping", "identity <unix-ms> <hex-entropy>". */
static void ctrl_command(char *line)
{
	uint64_t n;
	if (strncmp(line, "identity ", 9) == 0) {
		char err[256], reply[300];
		if (reidentify(line + 9, err, sizeof err) == 0) {
			ctrl_reply("ok\n");
			if (I.agent_pending) {
				I.agent_pending = 0;
				start_agent();
			}
		} else {
			logmsg("identity: %s", err);
			snprintf(reply, sizeof reply, "error %s\n", err);
			ctrl_reply(reply);
		}
		return;
	}
	if (strncmp(line, "stop ", 5) == 0 && parse_u64(line + 5, strlen(line + 5), &n) == 0) {
		ctrl_reply("ok\n");
		begin_stop("control", n);
	} else if (strncmp(line, "signal ", 7) == 0 && parse_u64(line + 7, strlen(line + 7), &n) == 0 && n > 0 &&
		   n < NSIG) {
		if (I.main_running && kill(I.main_pid, (int)n) == 0)
			ctrl_reply("ok\n");
		else
			ctrl_reply("error program not running\n");
	} else if (strcmp(line, "ping") == 0) {
		ctrl_reply(I.stopping ? "pong stopping\n" : "pong running\n");
	} else {
		ctrl_reply("error unknown command\n");
	}
}

static void ctrl_read(void)
{
	int hung_up = 0;
	for (;;) {
		char chunk[512];
		ssize_t n = read(I.ctrl, chunk, sizeof chunk);
		if (n > 0) {
			buf_put(&I.ctrl_rx, chunk, (size_t)n);
			continue;
		}
		hung_up = n == 0 || (errno != EAGAIN && errno != EINTR);
		break;
	}
	/* Commands that came with the hang-up still count ("stop" and close is a complete request). */
	while (I.ctrl_rx.len > 0) {
		uint8_t *nl = memchr(I.ctrl_rx.p, '\n', I.ctrl_rx.len);
		if (!nl) {
			if (I.ctrl_rx.len > 256)
				I.ctrl_rx.len = 0; /* no command is that long: drop garbage */
			break;
		}
		*nl = 0;
		ctrl_command((char *)I.ctrl_rx.p);
		buf_consume(&I.ctrl_rx, (size_t)(nl - I.ctrl_rx.p) + 1);
	}
	if (hung_up)
		ctrl_disconnected();
}

/* The ACPI power button (VMM "system_powerdown") arrives as KEY_POWER on an evdev device. */
static void open_power_buttons(void)
{
	if (I.inputs_opened++)
		return;
	DIR *d = opendir("/dev/input");
	struct dirent *e;
	while (d && (e = readdir(d)) != NULL && I.ninputs < MAX_INPUTS) {
		if (strncmp(e->d_name, "event", 5) != 0)
			continue;
		char path[300];
		snprintf(path, sizeof path, "/dev/input/%s", e->d_name);
		int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
		if (fd < 0)
			continue;
		unsigned long keys[KEY_MAX / (8 * sizeof(unsigned long)) + 1] = {0};
		if (ioctl(fd, EVIOCGBIT(EV_KEY, sizeof keys), keys) >= 0 &&
		    (keys[KEY_POWER / (8 * sizeof(unsigned long))] >> (KEY_POWER % (8 * sizeof(unsigned long)))) & 1)
			I.inputs[I.ninputs++] = fd;
		else
			close(fd);
	}
	if (d)
		closedir(d);
}

static void input_read(int fd)
{
	struct input_event ev[16];
	ssize_t n;
	while ((n = read(fd, ev, sizeof ev)) > 0)
		for (size_t i = 0; i < (size_t)n / sizeof ev[0]; i++)
			if (ev[i].type == EV_KEY && ev[i].code == KEY_POWER && ev[i].value == 1)
				begin_stop("acpi", I.cfg.stop_grace_ms);
}

static void supervise(void) __attribute__((noreturn));
static void supervise(void)
{
	for (;;) {
		struct pollfd pfd[2 + MAX_INPUTS];
		nfds_t n = 0;
		pfd[n++] = (struct pollfd){.fd = I.sfd, .events = POLLIN};
		if (I.ctrl_connected)
			pfd[n++] = (struct pollfd){.fd = I.ctrl, .events = POLLIN};
		for (int i = 0; i < I.ninputs; i++)
			pfd[n++] = (struct pollfd){.fd = I.inputs[i], .events = POLLIN};
		int timeout = -1;
		if (I.ctrl >= 0 && !I.ctrl_connected)
			timeout = 5000; /* SIGIO wakes us on connect; this is only the safety net */
		if (I.stopping && !I.grace_over) {
			uint64_t now = monotonic_ms();
			uint64_t left = I.stop_deadline > now ? I.stop_deadline - now : 0;
			if (left > 60000)
				left = 60000; /* poll takes an int; a longer grace just loops */
			if (timeout < 0 || (int)left < timeout)
				timeout = (int)left;
		}
		if (poll(pfd, n, timeout) < 0 && errno != EINTR)
			continue;
		for (nfds_t i = 0; i < n; i++) {
			if (!pfd[i].revents)
				continue;
			if (pfd[i].fd == I.sfd) {
				struct signalfd_siginfo si;
				while (read(I.sfd, &si, sizeof si) == sizeof si) {
					int sig = (int)si.ssi_signo;
					if (sig == SIGCHLD || sig == SIGIO)
						continue;
					if (I.main_running)
						kill(I.main_pid, sig);
				}
				reap();
			} else if (pfd[i].fd == I.ctrl) {
				ctrl_read();
			} else {
				input_read(pfd[i].fd);
			}
		}
		if (I.ctrl >= 0 && !I.ctrl_connected)
			ctrl_probe();
		if (I.stopping && !I.grace_over && I.main_running && monotonic_ms() >= I.stop_deadline) {
			kill(-I.main_pid, SIGKILL);
			kill(I.main_pid, SIGKILL);
			I.grace_over = 1;
		}
	}
}

/* docker's three files, over the image's. */
static int network_files(const struct guest_config *cfg, char *err, size_t cap)
{
	static char hosts[4096], hostname[128], resolv[4096];
	struct gen_file files[3] = {{"/etc/hosts", hosts}, {"/etc/hostname", hostname}, {"/etc/resolv.conf", resolv}};
	if (render_hosts(cfg, hosts, sizeof hosts) < 0 || render_hostname(cfg, hostname, sizeof hostname) < 0 ||
	    render_resolv_conf(cfg, resolv, sizeof resolv) < 0) {
		snprintf(err, cap, "rendering /etc files: too many entries");
		return -1;
	}
	return bind_generated_files(files, 3, err, cap);
}

/* The ports by name: program output, control, and the agent's (absent when the instance skips it). */
static void find_ports(int *app, int want_agent)
{
	char dev[64];
	*app = -1;
	if (find_virtio_port(PORT_APP, dev, sizeof dev, PORT_WAIT_MS) == 0)
		*app = open(dev, O_WRONLY | O_CLOEXEC);
	if (*app < 0)
		logmsg("no %s port: program output goes to the console", PORT_APP);
	if (find_virtio_port(PORT_CONTROL, dev, sizeof dev, PORT_WAIT_MS) == 0)
		I.ctrl = open(dev, O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (I.ctrl >= 0) {
		fcntl(I.ctrl, F_SETOWN, 1);
		ctrl_disconnected();
		ctrl_probe();
	} else {
		logmsg("no %s port: graceful stop only through the power button", PORT_CONTROL);
	}
	if (want_agent && find_virtio_port(PORT_AGENT, I.agent_dev, sizeof I.agent_dev, PORT_WAIT_MS) < 0) {
		I.agent_dev[0] = 0;
		logmsg("no %s port: agent not started", PORT_AGENT);
	}
}

/* The `late` phase's files, opened now and loaded once the program runs. */
static void open_late_modules(struct module_set *late)
{
	char err[512];
	if (modules_open(MODULES_LIST, "late", late, err, sizeof err) < 0)
		logmsg("late modules: %s", err);
}

/* A SCSI controller is there for volumes hot-plugged while the program runs. Its driver
 * (≈ 0.8 MB of modules, a few hundred ms of TCG CPU to load) loads now when a volume is on it
 * already (`now`); otherwise only its files are kept open (pinning them in memory once the
 * initramfs is gone) for the agent to load before the first hot mount. */
static void open_scsi_modules(int now)
{
	char err[512];
	if (now) {
		if (load_modules(MODULES_LIST, "scsi", err, sizeof err) < 0)
			fail("load_modules", err);
	} else if (virtio_device_present(VIRTIO_ID_SCSI)) {
		if (modules_open(MODULES_LIST, "scsi", &I.scsi, err, sizeof err) < 0)
			logmsg("scsi modules: %s", err);
	}
}

/*
 * The image under the overlay disk as the new root, the kernel headers in it when `disks` names
 * their disk (found into `disks->headers_dev`); the failing step's name is in `err`. A template
 * does this before it waits (with what the cmdline and the disks say); a cold boot with its config.
 */
static int enter_root(struct guest_config *disks, const struct guest_config *cfg, int64_t *headers_ms, char *err, size_t cap)
{
	char rootdev[64], overlaydev[64], why[448];
	uint64_t t0 = monotonic_ms(), t1;
	if (find_disk_by_serial(DISK_ROOTFS, rootdev, sizeof rootdev, DISK_WAIT_MS) < 0)
		FAIL("find_disks: no disk with serial " DISK_ROOTFS);
	if (find_disk_by_serial(DISK_OVERLAY, overlaydev, sizeof overlaydev, DISK_WAIT_MS) < 0)
		FAIL("find_disks: no disk with serial " DISK_OVERLAY);
	if (headers_find(disks, DISK_WAIT_MS, why, sizeof why) < 0)
		FAIL("find_disks: %s", why);
	t1 = monotonic_ms();
	if (mount_root(cfg, rootdev, overlaydev, why, sizeof why) < 0)
		FAIL("mount_root: %s", why);
	I.overlay_fd = open("/mnt/overlay", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (switch_root(why, sizeof why) < 0)
		FAIL("switch_root: %s", why);
	/* Before the volumes: its links belong in the root's writable layer, never in a volume at /usr or /lib. */
	uint64_t t2 = monotonic_ms();
	if (headers_mount(disks, why, sizeof why) < 0)
		FAIL("kernel_headers: %s", why);
	if (disks->headers_serial)
		*headers_ms = (int64_t)(t1 - t0 + monotonic_ms() - t2);
	return 0;
}

static void pid1(void) __attribute__((noreturn));
static void pid1(void)
{
	char err[512], dev[64], cfgdev[64];
	uint64_t init_ms = uptime_ms();
	sigset_t mask;
	sigfillset(&mask);
	sigdelset(&mask, SIGSEGV);
	sigdelset(&mask, SIGBUS);
	sigdelset(&mask, SIGFPE);
	sigdelset(&mask, SIGILL);
	sigprocmask(SIG_SETMASK, &mask, NULL);
	I.sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);

	if (mount_pseudo_fs(err, sizeof err) < 0)
		fail("mount_pseudo_fs", err);
	reboot(RB_DISABLE_CAD);
	uint64_t modules_start = monotonic_ms();
	int modules_rc = load_modules(MODULES_LIST, "boot", err, sizeof err);
	uint64_t modules_ms = monotonic_ms() - modules_start;
	if (find_virtio_port(PORT_STATUS, dev, sizeof dev, PORT_WAIT_MS) == 0)
		status_open(dev);
	else
		logmsg("no %s port: status events go to the console", PORT_STATUS);
	status_boot(init_ms, modules_ms);
	if (modules_rc < 0)
		fail("load_modules", err);
	struct template_mode tpl;
	template_mode_read(&tpl);
	int app = -1;

	/* A template waits here, before anything of the instance's, for the host's snapshot and `go`. */
	static struct module_set late;
	char nic[32] = "";
	int64_t headers_ms = -1;
	if (tpl.on) {
		if (tpl.net && load_modules(MODULES_LIST, "net", err, sizeof err) < 0)
			fail("template", err);
		if (tpl.net && net_find_nic(NIC_WAIT_MS, nic, sizeof nic) < 0)
			fail("template", "no network interface appeared");
		if (tpl.erofs && load_modules(MODULES_LIST, "erofs", err, sizeof err) < 0)
			fail("template", err);
		find_ports(&app, tpl.agent);
		/* Nothing of the late modules and the power buttons is an instance's: done here once, not
		 * by every instance after its program started. There they cost ≈ 250-400 ms of TCG CPU,
		 * which a standby or a fork soon after carried into a VMM with a cold translation cache
		 * and paid for again. */
		if (load_modules(MODULES_LIST, "late", err, sizeof err) < 0)
			logmsg("late modules: %s", err);
		open_power_buttons();
		if (I.ctrl < 0)
			fail("template", "no " PORT_CONTROL " port to wait on");
		/* The root too: the image and headers disks are every instance's, and the host gives each
		 * instance a copy of this overlay disk as the template leaves it. */
		open_scsi_modules(0);
		static char headers_serial[] = DISK_HEADERS;
		struct guest_config root = {.rootfs_fstype = tpl.erofs ? "erofs" : "ext4", .headers_serial = tpl.headers ? headers_serial : NULL};
		if (enter_root(&root, &root, &headers_ms, err, sizeof err) < 0)
			fail("template", err);
		/* The config disk is the same device in every copy (only its content is the instance's). */
		if (find_disk_by_serial(DISK_CONFIG, cfgdev, sizeof cfgdev, DISK_WAIT_MS) < 0)
			fail("template", "no disk with serial " DISK_CONFIG);
		if (net_loopback_up(err, sizeof err) < 0)
			fail("template", err);
		status_template();
		if (template_wait_go(I.ctrl, err, sizeof err) < 0)
			fail("template", err);
		status_boot(init_ms, modules_ms);
	}
	if (!tpl.on && find_disk_by_serial(DISK_CONFIG, cfgdev, sizeof cfgdev, DISK_WAIT_MS) < 0)
		fail("find_disks", "no disk with serial " DISK_CONFIG);
	snprintf(I.cfgdev, sizeof I.cfgdev, "%s", cfgdev);
	if (config_load(cfgdev, &I.cfg, err, sizeof err) < 0)
		fail("read_config", err);
	/* The NIC as soon as the config names it, so that the program, which may use the network as its
	 * first act, starts only once the link carries packets. */
	int64_t network_ms = -1, egress_ms = -1;
	char ifname[32] = "";
	uint64_t t0 = monotonic_ms();
	/* lo before the program, network or not: a program may bind 127.0.0.1 as its first act, as in
	 * docker (≈ 15 ms under TCG). */
	if (!tpl.on && net_loopback_up(err, sizeof err) < 0)
		fail("network", err);
	if (I.cfg.net.enabled) {
		if (!tpl.net && load_modules(MODULES_LIST, "net", err, sizeof err) < 0)
			fail("network", err);
		if (nic[0] && net_set_mac(nic, I.cfg.net.mac, err, sizeof err) < 0)
			fail("network", err);
		if (net_configure(&I.cfg.net, NIC_WAIT_MS, LINK_WAIT_MS, ifname, sizeof ifname, err, sizeof err) < 0)
			fail("network", err);
		snprintf(I.ifname, sizeof I.ifname, "%s", ifname);
		net_close();
		network_ms = (int64_t)(monotonic_ms() - t0);
	}
	if (!tpl.on)
		open_scsi_modules(I.cfg.vol_scsi);
	/* After the SCSI driver: a volume attached while running is on its bus now. */
	if (volumes_find(&I.cfg, DISK_WAIT_MS, err, sizeof err) < 0)
		fail("find_disks", err);
	if (!tpl.on) {
		find_ports(&app, !I.cfg.skip_agent);
		open_late_modules(&late);
		if (strcmp(I.cfg.rootfs_fstype, "erofs") == 0 && load_modules(MODULES_LIST, "erofs", err, sizeof err) < 0)
			fail("load_modules", err);
		if (enter_root(&I.cfg, &I.cfg, &headers_ms, err, sizeof err) < 0)
			fail("mount_root", err);
	}
	if (!I.agent_dev[0])
		I.cfg.skip_agent = 1;
	/* Before the container setup: a working directory inside a volume is then made in the volume. */
	if (volumes_mount(&I.cfg, err, sizeof err) < 0)
		fail("mount_volumes", err);
	if (setup_container(&I.cfg, err, sizeof err) < 0)
		fail("setup_container", err);
	if (I.cfg.net.enabled) {
		t0 = monotonic_ms();
		if (network_files(&I.cfg, err, sizeof err) < 0)
			fail("network", err);
		network_ms += (int64_t)(monotonic_ms() - t0);
	}
	if (I.cfg.egress.enabled) {
		t0 = monotonic_ms();
		if (egress_install(&I.cfg, err, sizeof err) < 0)
			fail("egress", err);
		egress_ms = (int64_t)(monotonic_ms() - t0);
	}
	if (I.cfg.net.enabled) {
		t0 = monotonic_ms();
		if (net_wait_link(ifname, LINK_WAIT_MS, err, sizeof err) < 0)
			fail("network", err);
		network_ms += (int64_t)(monotonic_ms() - t0);
	}

	I.oom_before = oom_kills();
	struct spawn_opts o = {
		.argv = I.cfg.argv,
		.envp = I.cfg.env,
		.cwd = I.cfg.workdir,
		.user = I.cfg.user,
		.stdin_fd = -1,
		.stdout_fd = app >= 0 ? app : 1,
		.stderr_fd = app >= 0 ? app : 2,
		.tty_fd = -1,
	};
	struct spawn_result res;
	if (spawn_program(&o, &res) < 0)
		fail("start_program", strerror(errno));
	if (res.failed) {
		waitpid(res.pid, NULL, 0);
		status_exited(res.exit_code, 0, 0, res.message);
		power_off();
	}
	I.main_pid = res.pid;
	I.main_running = 1;
	status_started(res.pid, network_ms, egress_ms, headers_ms);
	if (!I.cfg.skip_agent)
		start_agent();
	net_close();
	/* Off the path to "started": what only matters once the program runs (power button, vsock). */
	if (modules_load(&late, err, sizeof err) < 0)
		logmsg("late modules: %s", err);
	open_power_buttons();
	supervise();
}

/* A config image file, parsed as the guest parses its disk; prints the error and returns -1 on failure. */
static int cli_config(const char *path, struct guest_config *c)
{
	char err[512] = "cannot read the file";
	int fd = open(path, O_RDONLY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0)
		return perror(path), -1;
	uint8_t *data = malloc((size_t)st.st_size + 1);
	ssize_t got = data ? read(fd, data, (size_t)st.st_size) : -1;
	close(fd);
	if (got < 0 || config_parse(data, (size_t)got, c, err, sizeof err) < 0) {
		fprintf(stderr, "%s\n", err);
		return -1;
	}
	return 0;
}

/* Host-side entry points for tests: the same parsers the guest uses, fed from files. */
static int cli(int argc, char **argv)
{
	char err[512];
	struct guest_config c;
	if (argc == 3 && strcmp(argv[1], "parse-config") == 0) {
		if (cli_config(argv[2], &c) < 0)
			return 1;
		for (size_t i = 0; i < c.argc; i++)
			printf("argv=%s\n", c.argv[i]);
		for (size_t i = 0; i < c.envc; i++)
			printf("env=%s\n", c.env[i]);
		printf("workdir=%s\nuser=%s\nhostname=%s\nrootfs_fstype=%s\nskip_agent=%d\nstop_grace_ms=%llu\n",
		       c.workdir, c.user, c.hostname, c.rootfs_fstype, c.skip_agent, (unsigned long long)c.stop_grace_ms);
		if (c.machine_id)
			printf("machine_id=%s\n", c.machine_id);
		if (c.net.enabled) {
			printf("net.mac=%s\nnet.address=%s/%u\nnet.gateway=%s\nnet.mtu=%u\n", c.net.mac, c.net.address, c.net.prefix_len,
			       c.net.gateway, c.net.mtu);
			for (size_t i = 0; i < c.net.ndns; i++)
				printf("net.dns=%s\n", c.net.dns[i]);
		}
		if (c.egress.enabled) {
			printf("ca_bundle.bytes=%zu\n", strlen(c.egress.ca_bundle));
			for (size_t i = 0; i < c.egress.envc; i++)
				printf("egress.env=%s\n", c.egress.env[i]);
		}
		for (size_t i = 0; i < c.nvol; i++)
			printf("volume=%s %s%s %s\n", c.vol[i].serial, c.vol[i].overlay_serial ? "overlay=" : c.vol[i].readonly ? "ro" : "rw",
			       c.vol[i].overlay_serial ? c.vol[i].overlay_serial : "", c.vol[i].path);
		if (c.headers_serial)
			printf("kernel_headers=%s\n", c.headers_serial);
		if (c.vol_scsi)
			printf("volume.scsi=1\n");
		return 0;
	}
	if (argc == 3 && strcmp(argv[1], "render-etc") == 0) {
		static char buf[4096];
		if (cli_config(argv[2], &c) < 0)
			return 1;
		if (!c.net.enabled)
			return 0;
		if (render_hosts(&c, buf, sizeof buf) == 0)
			printf("--- /etc/hosts\n%s", buf);
		if (render_hostname(&c, buf, sizeof buf) == 0)
			printf("--- /etc/hostname\n%s", buf);
		if (render_resolv_conf(&c, buf, sizeof buf) == 0)
			printf("--- /etc/resolv.conf\n%s", buf);
		return 0;
	}
	if (argc == 3 && strcmp(argv[1], "mount-target") == 0) {
		char out[4096];
		if (mount_target(argv[2], out, sizeof out, err, sizeof err) < 0) {
			fprintf(stderr, "%s\n", err);
			return 1;
		}
		printf("%s\n", out);
		return 0;
	}
	if (argc == 3 && strcmp(argv[1], "write-machine-id") == 0) {
		if (write_machine_id(argv[2], err, sizeof err) < 0) {
			fprintf(stderr, "%s\n", err);
			return 1;
		}
		return 0;
	}
	if (argc == 3 && strcmp(argv[1], "apply-egress") == 0) {
		if (cli_config(argv[2], &c) < 0)
			return 1;
		if (c.egress.enabled && egress_install(&c, err, sizeof err) < 0) {
			fprintf(stderr, "%s\n", err);
			return 1;
		}
		for (size_t i = 0; i < c.envc; i++)
			printf("env=%s\n", c.env[i]);
		return 0;
	}
	if (argc == 4 && strcmp(argv[1], "resolve-user") == 0) {
		struct exec_user u;
		if (resolve_user(argv[2], argv[3], &u, err, sizeof err) < 0) {
			fprintf(stderr, "%s\n", err);
			return 1;
		}
		printf("uid=%u gid=%u home=%s groups=", (unsigned)u.uid, (unsigned)u.gid, u.home);
		for (size_t i = 0; i < u.nsgids; i++)
			printf("%s%u", i ? "," : "", (unsigned)u.sgids[i]);
		printf("\n");
		return 0;
	}
	if (argc >= 3 && strcmp(argv[1], "builtin") == 0 && builtin_known(argv[2])) {
		int rc = run_builtin(argv[2], argv + 3);
		fflush(stdout);
		return rc;
	}
	fprintf(stderr, "usage: hypeman-init (as PID 1) | parse-config FILE | resolve-user ROOT SPEC | render-etc FILE | "
			"mount-target PATH | write-machine-id ID | apply-egress FILE | builtin write-file|mkdir|read-tree|mount-volume|umount-volume ARGS...\n");
	return 2;
}

int main(int argc, char **argv)
{
	if (getpid() == 1)
		pid1();
	return cli(argc, argv);
}
