// The public headers are usable from C++.
#include <imchat/server.h> // first: it stands alone
#include <imchat/imchat.h>

int main() {
  return imc_strerror(IMC_OK) == nullptr;
}
