#!/usr/bin/env bash
# Regenerates the sandbox's test PKI. These keys are test fixtures, never secrets:
# they exist so the sandbox can sign webhooks the way Partner Center does and so
# the sandbox Salesforce token endpoint can check JWT bearer assertions.
#
#   root (CA) -> intermediate (CA) -> leaf "pcnotifications-dispatch" (O=Microsoft Corporation)
#                                   -> leaf "other-service" (O=Microsoft Corporation, another CN:
#                                      a genuine chain, the wrong subject)
#   salesforce-connected-app: key + self-signed certificate "uploaded" to the sandbox org
#
# Usage: bash sandbox/certs/generate.sh   (needs openssl; valid for 20 years)
set -euo pipefail
cd "$(dirname "$0")"
days=7300
subj_base="/C=US/ST=Washington/L=Redmond/O=Microsoft Corporation"

openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" \
  -keyout root.key.pem -out root.cert.pem \
  -subj "$subj_base/CN=cosell-sync Sandbox Root CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign"

openssl req -newkey rsa:2048 -nodes -sha256 -keyout intermediate.key.pem -out intermediate.csr \
  -subj "$subj_base/CN=cosell-sync Sandbox Intermediate CA"
openssl x509 -req -in intermediate.csr -CA root.cert.pem -CAkey root.key.pem -CAcreateserial \
  -days "$days" -sha256 -out intermediate.cert.pem \
  -extfile <(printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n')

openssl req -newkey rsa:2048 -nodes -sha256 -keyout leaf.key.pem -out leaf.csr \
  -subj "$subj_base/CN=pcnotifications-dispatch.microsoft.com"
openssl x509 -req -in leaf.csr -CA intermediate.cert.pem -CAkey intermediate.key.pem -CAcreateserial \
  -days "$days" -sha256 -out leaf.cert.pem \
  -extfile <(printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:pcnotifications-dispatch.microsoft.com\n')

# A leaf of the same chain and organisation for another service: for "wrong subject" tests.
openssl req -newkey rsa:2048 -nodes -sha256 -keyout other-subject.key.pem -out other-subject.csr \
  -subj "$subj_base/CN=other-service.microsoft.com"
openssl x509 -req -in other-subject.csr -CA intermediate.cert.pem -CAkey intermediate.key.pem -CAcreateserial \
  -days "$days" -sha256 -out other-subject.cert.pem \
  -extfile <(printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:other-service.microsoft.com\n')

# A second leaf, same subject, signed by an untrusted self-made CA: for "wrong chain" tests.
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" \
  -keyout rogue.key.pem -out rogue.cert.pem \
  -subj "$subj_base/CN=pcnotifications-dispatch.microsoft.com" \
  -addext "basicConstraints=critical,CA:FALSE" -addext "keyUsage=critical,digitalSignature"

openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" \
  -keyout salesforce-connected-app.key.pem -out salesforce-connected-app.cert.pem \
  -subj "/O=cosell-sync sandbox/CN=salesforce-connected-app"

# PKCS#8 for the signing keys (what aws-lc-rs / jsonwebtoken load).
for k in leaf other-subject rogue salesforce-connected-app; do
  openssl pkcs8 -topk8 -nocrypt -in "$k.key.pem" -out "$k.pk8.pem"
  mv "$k.pk8.pem" "$k.key.pem"
done
openssl x509 -in salesforce-connected-app.cert.pem -pubkey -noout > salesforce-connected-app.pub.pem
openssl x509 -in leaf.cert.pem -outform DER -out leaf.cer
openssl x509 -in other-subject.cert.pem -outform DER -out other-subject.cer
openssl x509 -in rogue.cert.pem -outform DER -out rogue.cer
rm -f ./*.csr ./*.srl root.key.pem intermediate.key.pem
