/* Compiles the public headers alone as strict C11. */
#include <imchat/server.h> /* first: it stands alone */
#include <imchat/imchat.h>

int main(void) {
  return imc_strerror(IMC_OK) == 0;
}
