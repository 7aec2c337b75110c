// The public headers are usable from C++.
#include <imchat/imchat.h>

int main() {
  return imc_strerror(IMC_OK) == nullptr;
}
