#!/bin/sh
# Certificates for the gRPC mutual-TLS unit tests (test_grpc_net), made
# with the openssl command into OUTDIR:
#   grpc-ca.pem               the cluster's CA
#   grpc-node.{pem,key}       signed by it; 127.0.0.1, ::1 and localhost
#   grpc-rogue.{pem,key}      the same names, signed by another CA
#   grpc-misnamed.{pem,key}   signed by the cluster's CA; other.example only
set -eu
out=$1
mkdir -p "$out"
cd "$out"
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
ca() { # NAME CN
  openssl req -x509 $ec -keyout "$1.key" -out "$1.pem" -days 3650 \
    -subj "/CN=$2" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}
leaf() { # NAME CA SAN SERIAL
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' \
    "$3" >"$1.ext"
  openssl req $ec -keyout "$1.key" -out "$1.csr" -subj "/CN=$1" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" \
    -set_serial "$4" -days 3650 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
ca grpc-ca "imchat test cluster CA"
ca grpc-rogue-ca "another CA"
leaf grpc-node grpc-ca "IP:127.0.0.1,IP:::1,DNS:localhost" 2
leaf grpc-misnamed grpc-ca "DNS:other.example" 3
leaf grpc-rogue grpc-rogue-ca "IP:127.0.0.1,IP:::1,DNS:localhost" 4
