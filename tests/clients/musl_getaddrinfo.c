/* getaddrinfo as a pod linked against musl resolves a name: every address, one per line.
 *
 * Built statically with musl-gcc by tests/integration/test_musl_client.py. musl before 1.2.4
 * (Alpine 3.17 and older) never retries over TCP: it uses whatever a truncated UDP reply holds.
 *
 * usage: musl_getaddrinfo [-4] NAME    (-4: AF_INET only; default AF_UNSPEC)
 * exit status: 0 with addresses printed, 2 when getaddrinfo fails (its message on stderr).
 */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv)
{
	int family = AF_UNSPEC;
	if (argc == 3 && strcmp(argv[1], "-4") == 0) {
		family = AF_INET;
		argv++;
		argc--;
	}
	if (argc != 2) {
		fprintf(stderr, "usage: %s [-4] NAME\n", argv[0]);
		return 64;
	}
	struct addrinfo hints, *res, *ai;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = family;
	hints.ai_socktype = SOCK_STREAM;
	int rc = getaddrinfo(argv[1], NULL, &hints, &res);
	if (rc != 0) {
		fprintf(stderr, "getaddrinfo %s: %s\n", argv[1], gai_strerror(rc));
		return 2;
	}
	char text[INET6_ADDRSTRLEN];
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		const void *addr = ai->ai_family == AF_INET
			? (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
			: (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
		if (inet_ntop(ai->ai_family, addr, text, sizeof text) != NULL)
			puts(text);
	}
	freeaddrinfo(res);
	return 0;
}
