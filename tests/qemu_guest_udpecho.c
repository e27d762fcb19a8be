/* UDP echo client for the QEMU test guest (tests/qemu_guest.py): Debian's
 * busybox nc has no -u, so this small static program does it.
 *
 *   udpecho ADDR PORT SIZE...
 *
 * For each SIZE, send one datagram of SIZE pseudo-random bytes to ADDR
 * (IPv4 or IPv6) and wait for the same bytes back (up to 3 tries of 2 s
 * each: UDP may lose one).  Prints "SIZE:ok", "SIZE:mismatch" or
 * "SIZE:timeout" per size on one line; exit 0 when all were ok. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_SIZE 65507

static unsigned char sent[MAX_SIZE], got[MAX_SIZE + 1];

static const char *echo_one(int fd, const struct sockaddr *to, socklen_t tolen, size_t size,
                            unsigned seed)
{
	for (size_t i = 0; i < size; i++) {
		seed = seed * 1103515245u + 12345u;
		sent[i] = seed >> 16;
	}
	for (int attempt = 0; attempt < 3; attempt++) {
		if (sendto(fd, sent, size, 0, to, tolen) != (ssize_t)size)
			return "send-failed";
		struct pollfd p = { .fd = fd, .events = POLLIN };
		while (poll(&p, 1, 2000) == 1) {
			ssize_t n = recv(fd, got, sizeof(got), 0);
			if (n == (ssize_t)size && memcmp(sent, got, size) == 0)
				return "ok";
			if (n >= 0)
				return "mismatch";
		}
	}
	return "timeout";
}

int main(int argc, char **argv)
{
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6 };
	struct sockaddr_in a4 = { .sin_family = AF_INET };
	struct sockaddr *to = (struct sockaddr *)&a4;
	socklen_t tolen = sizeof(a4);
	int failed = 0;

	if (argc < 4) {
		fprintf(stderr, "usage: udpecho ADDR PORT SIZE...\n");
		return 2;
	}
	a4.sin_port = a6.sin6_port = htons(atoi(argv[2]));
	if (inet_pton(AF_INET6, argv[1], &a6.sin6_addr) == 1) {
		to = (struct sockaddr *)&a6;
		tolen = sizeof(a6);
	} else if (inet_pton(AF_INET, argv[1], &a4.sin_addr) != 1) {
		fprintf(stderr, "udpecho: bad address %s\n", argv[1]);
		return 2;
	}
	int fd = socket(to->sa_family, SOCK_DGRAM, 0);
	if (fd < 0 || connect(fd, to, tolen) < 0) {
		perror("udpecho");
		return 1;
	}
	for (int i = 3; i < argc; i++) {
		size_t size = strtoul(argv[i], NULL, 10);
		const char *outcome = size > MAX_SIZE ? "too-big" : echo_one(fd, to, tolen, size, i);
		failed |= strcmp(outcome, "ok") != 0;
		printf("%s%zu:%s", i > 3 ? " " : "", size, outcome);
	}
	printf("\n");
	return failed;
}
