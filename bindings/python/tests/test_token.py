"""imchat.sign_token: HS256 tokens from imc_jwt_sign_hs256, checked here
with Python's own hmac and json."""

import base64
import hashlib
import hmac
import json
import unittest

import support  # noqa: F401

import imchat
from imchat import errors


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class SignToken(unittest.TestCase):
    def test_claims_and_signature(self):
        tok = imchat.sign_token("s3cret", "alice", "phone", issuer="me",
                                audience="chat", ttl=60, iat=1700000000)
        h, p, sig = tok.split(".")
        self.assertEqual(json.loads(b64d(h))["alg"], "HS256")
        self.assertEqual(json.loads(b64d(p)),
                         {"sub": "alice", "did": "phone", "iss": "me",
                          "aud": "chat", "iat": 1700000000,
                          "exp": 1700000060})
        want = hmac.new(b"s3cret", (h + "." + p).encode(),
                        hashlib.sha256).digest()
        self.assertEqual(b64d(sig), want)

    def test_optional_claims_left_out(self):
        tok = imchat.sign_token(b"\x00\xffkey", "bob")
        claims = json.loads(b64d(tok.split(".")[1]))
        self.assertEqual(claims["sub"], "bob")
        self.assertEqual(claims["exp"] - claims["iat"], 86400)
        for c in ("did", "iss", "aud"):
            self.assertNotIn(c, claims)

    def test_bad_input_raises(self):
        with self.assertRaises(errors.InvalidArgument):
            imchat.sign_token("", "alice")
        with self.assertRaises(errors.InvalidArgument):
            imchat.sign_token("k", "not a valid id")
        with self.assertRaises(errors.InvalidArgument):
            imchat.sign_token("k", None)
        with self.assertRaises(errors.InvalidArgument):
            imchat.sign_token("k", "alice\0bob")  # would be cut in C
        with self.assertRaises(errors.InvalidArgument):
            imchat.sign_token("k", "alice", issuer="x" * 300)


if __name__ == "__main__":
    unittest.main(verbosity=2)
