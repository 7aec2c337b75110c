"""Exceptions for the negative IMC_ERR_* codes of <imchat/common.h>.

One class per code, made from the imc_error enum of the declarations (which
tests/test_cdef.py holds equal to the header), so a code added to the
header gets its class without an edit here: IMC_ERR_NOT_FOUND is NotFound,
IMC_ERR_INVALID_ARGUMENT is InvalidArgument, and so on. Every class
subclasses ImchatError and carries .code (the negative value) and .name
(the C name); the codes imc_err_is_fatal() calls fatal also subclass Fatal.
"""

from ._lib import ffi, lib, pystr

_PREFIX = "IMC_ERR_"


class ImchatError(Exception):
    """A libimchat error: .code is the negative IMC_ERR_* value."""

    code = None
    name = None

    def __init__(self, message=None, code=None):
        if code is not None:
            self.code = code
        if message is None:
            message = strerror(self.code)
        super().__init__(message)

    def __str__(self):
        return "%s (%s)" % (super().__str__(), self.name or self.code)


def strerror(code):
    """imc_strerror(code): a short English description."""
    return pystr(lib.imc_strerror(code))


def _class_name(c_name):
    return "".join(w.capitalize() for w in c_name[len(_PREFIX):].split("_"))


_BY_CODE = {}
__all__ = ["ImchatError", "strerror", "error", "check"]


def _make_classes():
    codes = ffi.typeof("imc_error").relements
    fatal_code = codes[_PREFIX + "FATAL"]
    # FATAL first: the fatal codes below it subclass it.
    order = sorted((v, k) for k, v in codes.items() if k.startswith(_PREFIX))
    order.sort(key=lambda vk: vk[0] != fatal_code)
    for value, c_name in order:
        fatal = value != fatal_code and lib.imc_err_is_fatal(value)
        base = _BY_CODE[fatal_code] if fatal else ImchatError
        cls = type(_class_name(c_name), (base,), {
            "code": value,
            "name": c_name,
            "__module__": __name__,
            "__doc__": "%s (%d): %s." % (c_name, value, strerror(value)),
        })
        _BY_CODE[value] = cls
        globals()[cls.__name__] = cls
        __all__.append(cls.__name__)


_make_classes()


def error(code, message=None):
    """The exception for a negative code: an instance of its class, or of
    ImchatError for a code the header does not list."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return ImchatError(message, code=code)
    return cls(message)


def check(rv, message=None):
    """Returns rv when it is 0 or positive, raises error(rv) when negative."""
    if rv < 0:
        raise error(rv, message)
    return rv
