/* batchctl - command-line client for the batchd REST API (in progress). */
#include <stdio.h>
int main(void)
{
	fprintf(stderr, "batchctl: not built yet\n");
	return 2;
}
