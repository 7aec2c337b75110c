"""The binding's cdef (imchat/_cdef.py) matches the public headers.

Each block of declarations is compared with the header it names, as the C
preprocessor sees it (`cc -E`, so comments are gone and IMC_EXTERN expands
to nothing): every declaration must appear there token for token, starting
where a declaration starts; every #define must have the same value in
`cc -dM -E`. A struct that gains a member, an enum that gains a code or a
function whose signature changes fails here instead of drifting.
"""

import os
import re
import shlex
import subprocess
import tempfile
import unittest

import support

import imchat  # noqa: F401  (checks the cdef parses and the library loads)
from imchat import _cdef
from imchat._lib import ffi, lib, server_lib

_TOKEN = re.compile(r"[A-Za-z_]\w*|0[xX][0-9A-Fa-f]+|\d+|\.\.\.|->|\S")


def tokens(text):
    return _TOKEN.findall(text)


def compiler(args, **kw):
    """Runs the C compiler with the public headers on the include path."""
    cc = shlex.split(os.environ.get("IMC_CC") or "cc")
    return subprocess.run(cc + ["-I", support.include_dir()] + args,
                          capture_output=True, text=True, **kw)


def preprocess(header, *flags):
    r = compiler(["-E", "-P", *flags, "-x", "c", "-"],
                 input="#include <%s>\n" % header)
    if r.returncode != 0:
        raise AssertionError("cc -E of <%s> failed:\n%s" % (header, r.stderr))
    return r.stdout


def split_block(text):
    """(declarations as token lists, {macro: value tokens}) of a block."""
    defines = {}
    body = []
    for line in text.splitlines():
        if line.startswith("#define"):
            _, name, value = line.split(None, 2)
            defines[name] = tokens(value)
        else:
            body.append(line)
    decls, cur, depth = [], [], 0
    for t in tokens("\n".join(body)):
        cur.append(t)
        if t in "({":
            depth += 1
        elif t in ")}":
            depth -= 1
        elif t == ";" and depth == 0:
            decls.append(cur)
            cur = []
    if cur:
        raise AssertionError("unterminated declaration: %s" % " ".join(cur))
    return decls, defines


def find_decl(decl, toks, starts):
    for i in starts.get(decl[0], ()):
        if toks[i:i + len(decl)] == decl and \
                (i == 0 or toks[i - 1] in (";", "}")):
            return True
    return False


class CdefMatchesHeaders(unittest.TestCase):
    def test_every_declaration_is_in_its_header(self):
        checked = 0
        for header, text in _cdef.HEADERS + _cdef.SERVER_HEADERS:
            decls, defines = split_block(text)
            toks = tokens(preprocess(header))
            starts = {}
            for i, t in enumerate(toks):
                starts.setdefault(t, []).append(i)
            for d in decls:
                with self.subTest(header=header, decl=" ".join(d[:6])):
                    self.assertTrue(
                        find_decl(d, toks, starts),
                        "not in <%s> as written (changed there?):\n%s"
                        % (header, " ".join(d)))
                checked += 1
            macros = {}
            for line in preprocess(header, "-dM").splitlines():
                parts = line.split(None, 2)
                if len(parts) == 3:
                    macros[parts[1]] = tokens(parts[2])
            for name, value in defines.items():
                with self.subTest(header=header, define=name):
                    self.assertEqual(macros.get(name), value,
                                     "#define %s differs in <%s>"
                                     % (name, header))
        self.assertGreater(checked, 50)

    def test_a_changed_declaration_is_caught(self):
        # The check itself: a member the header lacks is not found.
        toks = tokens(preprocess("imchat/backend.h"))
        starts = {}
        for i, t in enumerate(toks):
            starts.setdefault(t, []).append(i)
        (good,), _ = split_block(
            "typedef struct imc_keysrc_vtbl { uint32_t struct_size; int "
            "(*lookup)(void *ud, const char *alg, const char *kid, "
            "imc_key_cb done, void *done_ud); } imc_keysrc_vtbl;")
        bad = [t if t != "kid" else "key_id" for t in good]
        self.assertTrue(find_decl(good, toks, starts))
        self.assertFalse(find_decl(bad, toks, starts))
        # A tail of a declaration does not count as one.
        self.assertFalse(find_decl(good[1:], toks, starts))

    def test_every_declared_function_is_exported(self):
        for name in dir(lib):
            if name.startswith("imc_"):
                # server.h's functions are libimchat-server's.
                which = server_lib() if name.startswith("imc_server_") \
                    else lib
                with self.subTest(function=name):
                    try:
                        getattr(which, name)
                    except AttributeError as e:
                        self.fail("%s lacks %s: %s" % (which, name, e))

    def test_struct_sizes_are_the_compilers(self):
        # cffi lays the mirrored structs out like the C compiler does: the
        # struct_size a binding sends is the size the headers give.
        names = ["imc_msg", "imc_client_callbacks", "imc_keysrc_vtbl",
                 "imc_transport_vtbl", "imc_mem"]
        src = ("#include <imchat/client.h>\n#include <stdio.h>\n"
               "int main(void) {\n" +
               "".join('  printf("%%zu\\n", sizeof(%s));\n' % n
                       for n in names) + "  return 0;\n}\n")
        with tempfile.TemporaryDirectory() as d:
            exe = os.path.join(d, "sizes")
            r = compiler(["-x", "c", "-", "-o", exe], input=src)
            self.assertEqual(r.returncode, 0, r.stderr)
            sizes = subprocess.run([exe], capture_output=True, text=True,
                                   check=True).stdout.split()
        for n, s in zip(names, sizes):
            self.assertEqual(ffi.sizeof(n), int(s), n)


if __name__ == "__main__":
    unittest.main(verbosity=2)
