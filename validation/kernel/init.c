/*
 * Minimal PID 1 for the rcuscale guests: it only has to exist so that the kernel does not panic
 * with "No working init found". The rcuscale kfree test runs in kernel threads and powers the
 * guest off itself (rcuscale.shutdown=1); until then this process sleeps.
 * Built with `gcc -static` by validation/kernel/harness.py.
 */
#include <unistd.h>

int main(void)
{
	for (;;)
		sleep(3600);
	return 0;
}
