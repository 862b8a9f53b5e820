/*
 * Load rcuscale (and torture, which it needs) from the initramfs, after the boot has finished.
 *
 * Built in, rcuscale starts at its device initcall while the rest of the boot (serial and i8042
 * probing, late initcalls, freeing init memory) still runs for ~0.25 s on the one host thread that
 * emulates every vCPU: that work lands inside the measured loop and adds a nearly fixed amount to
 * every run, whatever its length. Loaded by PID 1, the test starts on a booted, idle guest.
 *
 * The test's parameters stay on the kernel command line as rcuscale.<name>=<value> (what modprobe
 * would pass). The kernel sets no parameter of a module it does not have built in, but
 * /proc/cmdline keeps them: they are read back from there and handed to finit_module() without
 * the prefix.
 * Included by init.c and variants/<name>.init.c; part of the build key (harness.py).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define RCUSCALE_PREFIX "rcuscale."

static char rcuscale_cmdline[4096], rcuscale_params[4096];

/* The rcuscale.* words of a kernel command line without their prefix, space separated. */
static const char *rcuscale_params_from(char *cmdline)
{
	char *word, *save = NULL;
	size_t used = 0;

	rcuscale_params[0] = '\0';
	for (word = strtok_r(cmdline, " \n", &save); word; word = strtok_r(NULL, " \n", &save)) {
		size_t len;

		if (strncmp(word, RCUSCALE_PREFIX, strlen(RCUSCALE_PREFIX)))
			continue;
		word += strlen(RCUSCALE_PREFIX);
		len = strlen(word);
		if (used + len + 2 > sizeof(rcuscale_params))
			break;
		if (used)
			rcuscale_params[used++] = ' ';
		memcpy(rcuscale_params + used, word, len);
		used += len;
		rcuscale_params[used] = '\0';
	}
	return rcuscale_params;
}

static const char *rcuscale_module_params(void)
{
	ssize_t n;
	int fd;

	mkdir("/proc", 0555);
	mount("proc", "/proc", "proc", 0, NULL);
	fd = open("/proc/cmdline", O_RDONLY);
	if (fd < 0)
		return "";
	n = read(fd, rcuscale_cmdline, sizeof(rcuscale_cmdline) - 1);
	close(fd);
	if (n <= 0)
		return "";
	rcuscale_cmdline[n] = '\0';
	return rcuscale_params_from(rcuscale_cmdline);
}

static int load_module(const char *path, const char *params)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	long rc;

	if (fd < 0) {
		printf("rcutune-init: cannot open %s: %s\n", path, strerror(errno));
		return -1;
	}
	rc = syscall(SYS_finit_module, fd, params, 0);
	if (rc != 0)
		printf("rcutune-init: loading %s failed: %s\n", path, strerror(errno));
	close(fd);
	return rc == 0 ? 0 : -1;
}

/*
 * Start the kfree test. On failure the guest powers off at once, so that the boot ends with "no
 * result" instead of waiting for the wall-clock timeout.
 */
static void start_rcuscale(void)
{
	const char *params = rcuscale_module_params();

	printf("rcutune-init: loading rcuscale %s\n", params);
	fflush(stdout);
	if (load_module("/torture.ko", "") || load_module("/rcuscale.ko", params)) {
		fflush(stdout);
		sync();
		reboot(RB_POWER_OFF);
	}
}
