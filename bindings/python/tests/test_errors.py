"""Every IMC_ERR_* code of <imchat/common.h> has its exception class."""

import os
import re
import unittest

import support

import imchat
from imchat import errors


def header_codes():
    """{C name: value} of the IMC_ERR_* enumerators, read from the header
    itself (not from the binding's declarations)."""
    with open(os.path.join(support.include_dir(), "imchat", "common.h")) as f:
        text = f.read()
    return {m.group(1): int(m.group(2)) for m in
            re.finditer(r"\b(IMC_ERR_\w+)\s*=\s*(-?\d+)", text)}


class ErrorClasses(unittest.TestCase):
    def test_every_code_has_its_class(self):
        codes = header_codes()
        self.assertGreater(len(codes), 20)
        classes = {}
        for c_name, value in codes.items():
            with self.subTest(code=c_name):
                cls = type(errors.error(value))
                self.assertTrue(issubclass(cls, imchat.ImchatError))
                self.assertIsNot(cls, imchat.ImchatError)
                self.assertEqual(cls.code, value)
                self.assertEqual(cls.name, c_name)
                self.assertIs(getattr(errors, cls.__name__), cls)
                self.assertIn(cls.__name__, errors.__all__)
                classes[cls.__name__] = c_name
        self.assertEqual(len(classes), len(codes))  # names are distinct

    def test_names(self):
        self.assertEqual(errors.InvalidArgument.code, -501)
        self.assertEqual(errors.NotFound.name, "IMC_ERR_NOT_FOUND")
        self.assertEqual(errors.RateLimited.code, -514)
        self.assertEqual(errors.CallbackFailure.code, -901)

    def test_fatal_codes_subclass_fatal(self):
        for value in header_codes().values():
            cls = type(errors.error(value))
            fatal = bool(imchat.lib.imc_err_is_fatal(value))
            with self.subTest(cls=cls.__name__):
                if cls is errors.Fatal:
                    continue
                self.assertEqual(issubclass(cls, errors.Fatal), fatal)
        self.assertTrue(issubclass(errors.Internal, errors.Fatal))
        self.assertFalse(issubclass(errors.NotFound, errors.Fatal))

    def test_message_and_code(self):
        e = errors.error(-507)
        self.assertIsInstance(e, errors.NotFound)
        self.assertEqual(e.code, -507)
        self.assertEqual(str(e), "not found (IMC_ERR_NOT_FOUND)")
        e = errors.error(-510, "not a member")
        self.assertEqual(str(e), "not a member (IMC_ERR_FORBIDDEN)")
        with self.assertRaises(errors.Forbidden) as cm:
            raise errors.Forbidden()
        self.assertEqual(cm.exception.code, -510)

    def test_unknown_code(self):
        e = errors.error(-4242)
        self.assertIs(type(e), imchat.ImchatError)
        self.assertEqual(e.code, -4242)

    def test_check(self):
        self.assertEqual(errors.check(0), 0)
        self.assertEqual(errors.check(7), 7)
        with self.assertRaises(errors.Closed):
            errors.check(-512)


if __name__ == "__main__":
    unittest.main(verbosity=2)
