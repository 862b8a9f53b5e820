/*
 * PID 1 for the rcuscale guests: load the kfree test once the boot is over (rcuscale_module.h),
 * then sleep. The test runs in kernel threads and powers the guest off itself
 * (rcuscale.shutdown=1). Built with `gcc -static` by validation/kernel/harness.py.
 */
#include "rcuscale_module.h"

int main(void)
{
	int fd = open("/dev/console", O_RDWR);

	if (fd >= 0) {
		dup2(fd, 0);
		dup2(fd, 1);
		dup2(fd, 2);
	}
	start_rcuscale();
	for (;;)
		sleep(3600);
	return 0;
}
