/* LD_PRELOAD shim for tests: the clock functions make the real system
 * call, as they do on a host booted with vdso=0 or whose clock source the
 * vDSO cannot read. */
#define _GNU_SOURCE
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int clock_gettime(clockid_t clock, struct timespec *ts)
{
	return syscall(SYS_clock_gettime, clock, ts);
}

int gettimeofday(struct timeval *tv, void *tz)
{
	return syscall(SYS_gettimeofday, tv, tz);
}

time_t time(time_t *t)
{
	return syscall(SYS_time, t);
}
