/*
 * PID 1 of the "trace" variant: print the kernel's own trace of the kvfree_rcu() events recorded
 * while rcuscale ran, then power the guest off.
 *
 * It loads rcuscale after the boot like the base init (rcuscale_module.h). The events are enabled
 * on the kernel command line (trace_event=...), so they record from early
 * boot into the ring buffer. This program mounts tracefs, waits until rcuscale has printed its
 * result line (read from the kernel log with klogctl) and until the number of recorded events has
 * not changed for rcutune_quiet_ms milliseconds (objects still pending after the loop are drained
 * by the kvfree_rcu() monitor up to 5 s later), then copies tracefs's `trace` file (header and one
 * line per event, the format trace_pipe and `trace-cmd report` use) and each CPU's `stats` to the
 * console between marker lines, and powers off. Boot with rcuscale.shutdown=0 so that rcuscale
 * does not power off first.
 *
 * Unknown kernel parameters without a dot reach PID 1 as environment variables:
 *   rcutune_quiet_ms=6000     quiet period before the dump
 *   rcutune_max_wait_s=120    give up waiting for the result line after this long (then dump)
 *   rcutune_max_quiet_s=30    dump this long after the result line even if events keep coming
 *                             (events such as sched:sched_switch never go quiet: this PID 1's
 *                             own sleeps record some)
 * Built with `gcc -static` by validation/kernel/harness.py.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/klog.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "rcuscale_module.h"

#define TRACEFS "/tracing"
#define RESULT "Total time taken by all kfree'ers"

static char logbuf[1 << 20];

static long env_long(const char *name, long dflt)
{
	const char *v = getenv(name);
	return v && *v ? strtol(v, NULL, 10) : dflt;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static int result_printed(void)
{
	int n = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, logbuf, sizeof(logbuf) - 1);

	if (n <= 0)
		return 0;
	logbuf[n] = '\0';
	return strstr(logbuf, RESULT) != NULL;
}

/* Sum of "entries:" over the per-CPU stats files: events recorded and still in the buffer. */
static long trace_entries(void)
{
	char path[128], line[256];
	long total = 0;
	int cpu;

	for (cpu = 0; cpu < 64; cpu++) {
		FILE *f;

		snprintf(path, sizeof(path), TRACEFS "/per_cpu/cpu%d/stats", cpu);
		f = fopen(path, "r");
		if (!f)
			break;
		while (fgets(line, sizeof(line), f))
			if (!strncmp(line, "entries:", 8))
				total += strtol(line + 8, NULL, 10);
		fclose(f);
	}
	return total;
}

static void copy_to_console(const char *path)
{
	char buf[8192];
	ssize_t n;
	int fd = open(path, O_RDONLY);

	if (fd < 0) {
		printf("rcutune-trace: cannot open %s\n", path);
		return;
	}
	fflush(stdout);
	while ((n = read(fd, buf, sizeof(buf))) > 0) {
		ssize_t off = 0;

		while (off < n) {
			ssize_t w = write(1, buf + off, n - off);

			if (w <= 0)
				break;
			off += w;
		}
	}
	close(fd);
}

int main(void)
{
	long quiet_ms = env_long("rcutune_quiet_ms", 6000);
	long max_wait_s = env_long("rcutune_max_wait_s", 120);
	long max_quiet_s = env_long("rcutune_max_quiet_s", 30);
	double t0 = now_s(), quiet_since, result_at;
	long last = -1;
	char path[128];
	int cpu, found;

	int fd = open("/dev/console", O_RDWR);
	if (fd >= 0) {
		dup2(fd, 0);
		dup2(fd, 1);
		dup2(fd, 2);
	}
	mkdir(TRACEFS, 0755);
	if (mount("tracefs", TRACEFS, "tracefs", 0, NULL) != 0)
		printf("rcutune-trace: mounting tracefs failed\n");
	start_rcuscale();

	while (!(found = result_printed()) && now_s() - t0 < max_wait_s)
		sleep_ms(100);
	printf("rcutune-trace: %s; waiting until the trace is quiet for %ld ms\n",
	       found ? "result line seen" : "no result line before the wait limit", quiet_ms);
	fflush(stdout);

	quiet_since = result_at = now_s();
	for (;;) {
		long n = trace_entries();

		if (now_s() - result_at >= max_quiet_s) {
			printf("rcutune-trace: still recording after %ld s; dumping\n", max_quiet_s);
			fflush(stdout);
			break;
		}
		if (n != last) {
			last = n;
			quiet_since = now_s();
		} else if ((now_s() - quiet_since) * 1000 >= quiet_ms) {
			break;
		}
		sleep_ms(100);
	}

	printf("rcutune-trace: begin " TRACEFS "/trace\n");
	fflush(stdout);
	copy_to_console(TRACEFS "/trace");
	printf("rcutune-trace: end " TRACEFS "/trace\n");
	for (cpu = 0; cpu < 64; cpu++) {
		snprintf(path, sizeof(path), TRACEFS "/per_cpu/cpu%d/stats", cpu);
		if (access(path, R_OK) != 0)
			break;
		printf("rcutune-trace: begin %s\n", path);
		fflush(stdout);
		copy_to_console(path);
		printf("rcutune-trace: end %s\n", path);
	}
	fflush(stdout);
	sync();
	reboot(RB_POWER_OFF);
	for (;;)
		sleep(3600);
	return 0;
}
