/* Sensitive-word filter: Aho-Corasick over bytes, see filter.h. */
#include "router/filter.h"

#include "util/lines.h"

#include "util/alloc.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define NO_STATE UINT32_MAX

/*
 * One automaton state. The children of a state are consecutive entries
 * of the state array starting at child, sorted by label, which is what
 * building in breadth-first order over sorted words yields for free.
 */
typedef struct fnode {
  uint32_t child;  /* index of the first child */
  uint32_t fail;   /* longest proper suffix that is also a state */
  uint32_t mlen;   /* bytes of the longest word ending here; 0: none */
  uint32_t nmatch; /* words ending here, counted along the fail chain */
  uint16_t nchild; /* up to 256 */
  uint8_t label;   /* byte on the edge from the parent */
} fnode;

/* A word of the list kept until build: wbuf[off .. off + len). */
typedef struct fword {
  uint32_t off;
  uint32_t len;
} fword;

struct imc_filter {
  imc_mem mem;
  /* word list, freed by build */
  uint8_t *wbuf;
  size_t wbuf_len, wbuf_cap;
  fword *words;
  size_t nwords, words_cap;
  /* automaton, NULL until built */
  fnode *nodes;
  size_t nnodes;
};

static uint8_t fold(uint8_t c) {
  return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + ('a' - 'A')) : c;
}

/*
 * Length of the well-formed UTF-8 sequence at p[0..n) (1 to 4), or 0 if
 * p does not start one (overlong forms, surrogates and values above
 * U+10FFFF are not well formed).
 */
static size_t utf8_seq_len(const uint8_t *p, size_t n) {
  uint8_t c = p[0], lo = 0x80, hi = 0xBF;
  size_t k;
  if (c < 0x80)
    return 1;
  if (c >= 0xC2 && c <= 0xDF)
    k = 2;
  else if (c >= 0xE0 && c <= 0xEF)
    k = 3;
  else if (c >= 0xF0 && c <= 0xF4)
    k = 4;
  else
    return 0;
  if (c == 0xE0)
    lo = 0xA0;
  else if (c == 0xED)
    hi = 0x9F;
  else if (c == 0xF0)
    lo = 0x90;
  else if (c == 0xF4)
    hi = 0x8F;
  if (n < k || p[1] < lo || p[1] > hi)
    return 0;
  for (size_t i = 2; i < k; i++)
    if ((p[i] & 0xC0) != 0x80)
      return 0;
  return k;
}

static int utf8_valid(const uint8_t *p, size_t n) {
  while (n > 0) {
    size_t k = utf8_seq_len(p, n);
    if (k == 0)
      return 0;
    p += k;
    n -= k;
  }
  return 1;
}

int imc_filter_new(imc_filter **out, const imc_mem *mem) {
  if (out == NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  imc_filter *f = imc_calloc(mem, 1, sizeof(*f));
  if (f == NULL)
    return IMC_ERR_NOMEM;
  f->mem = *mem;
  *out = f;
  return 0;
}

void imc_filter_del(imc_filter *f) {
  if (f == NULL)
    return;
  imc_free(&f->mem, f->wbuf);
  imc_free(&f->mem, f->words);
  imc_free(&f->mem, f->nodes);
  imc_free(&f->mem, f);
}

size_t imc_filter_size(const imc_filter *f) {
  return f == NULL ? 0 : f->nwords;
}

/* Grows *p to hold at least need elements of size sz; doubles. */
static int grow(const imc_mem *mem, void **p, size_t *cap, size_t need,
                size_t sz) {
  if (need <= *cap)
    return 0;
  size_t ncap = *cap ? *cap : 64;
  while (ncap < need) {
    if (ncap > SIZE_MAX / 2 / sz)
      return IMC_ERR_NOMEM;
    ncap *= 2;
  }
  void *np = imc_realloc(mem, *p, ncap * sz);
  if (np == NULL)
    return IMC_ERR_NOMEM;
  *p = np;
  *cap = ncap;
  return 0;
}

int imc_filter_add(imc_filter *f, const char *word, size_t len) {
  if (f == NULL || word == NULL || len == 0 || f->nodes != NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  const uint8_t *w = (const uint8_t *)word;
  if (!utf8_valid(w, len))
    return IMC_ERR_INVALID_ARGUMENT;
  /* Offsets, lengths and state indices are 32-bit. */
  if (len > UINT32_MAX - 1 - f->wbuf_len)
    return IMC_ERR_TOO_LARGE;
  /* Both arrays grow before either is written, so a failure leaves the
   * list as it was (only with more room). */
  int rv = grow(&f->mem, (void **)&f->wbuf, &f->wbuf_cap, f->wbuf_len + len, 1);
  if (rv == 0)
    rv = grow(&f->mem, (void **)&f->words, &f->words_cap, f->nwords + 1,
              sizeof(fword));
  if (rv != 0)
    return rv;
  for (size_t i = 0; i < len; i++)
    f->wbuf[f->wbuf_len + i] = fold(w[i]);
  f->words[f->nwords].off = (uint32_t)f->wbuf_len;
  f->words[f->nwords].len = (uint32_t)len;
  f->wbuf_len += len;
  f->nwords++;
  return 0;
}

static int word_cmp(const void *a, const void *b, void *ud) {
  const imc_filter *f = ud;
  const fword *x = &f->words[*(const uint32_t *)a];
  const fword *y = &f->words[*(const uint32_t *)b];
  size_t n = x->len < y->len ? x->len : y->len;
  int c = memcmp(f->wbuf + x->off, f->wbuf + y->off, n);
  if (c != 0)
    return c;
  return (x->len > y->len) - (x->len < y->len);
}

/* The child of s labelled c, or NO_STATE. */
static uint32_t child_of(const fnode *nodes, uint32_t s, uint8_t c) {
  uint32_t lo = nodes[s].child, hi = lo + nodes[s].nchild;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (nodes[mid].label < c)
      lo = mid + 1;
    else if (nodes[mid].label > c)
      hi = mid;
    else
      return mid;
  }
  return NO_STATE;
}

/* The goto function: follows fail links until c can be consumed. */
static uint32_t step(const fnode *nodes, uint32_t s, uint8_t c) {
  for (;;) {
    uint32_t t = child_of(nodes, s, c);
    if (t != NO_STATE)
      return t;
    if (s == 0)
      return 0;
    s = nodes[s].fail;
  }
}

/* Build-time data of a state: its words are idx[lo .. hi). */
typedef struct frange {
  uint32_t lo, hi, depth;
} frange;

int imc_filter_build(imc_filter *f) {
  if (f == NULL || f->nodes != NULL)
    return IMC_ERR_INVALID_ARGUMENT;
  const imc_mem *mem = &f->mem;
  size_t n = f->nwords;
  uint32_t *idx = NULL;
  fnode *nodes = NULL;
  frange *rg = NULL;

  /* Sorting the words makes every state's words a contiguous run and
   * lets the state count be known before allocating. */
  if (n > 0) {
    idx = imc_malloc(mem, n * sizeof(*idx));
    if (idx == NULL)
      return IMC_ERR_NOMEM;
    for (size_t i = 0; i < n; i++)
      idx[i] = (uint32_t)i;
    qsort_r(idx, n, sizeof(*idx), word_cmp, f);
  }
  size_t m = 0, nn = 1;
  for (size_t i = 0; i < n; i++) {
    const fword *w = &f->words[idx[i]];
    size_t lcp = 0;
    if (m > 0) {
      const fword *p = &f->words[idx[m - 1]];
      size_t lim = p->len < w->len ? p->len : w->len;
      while (lcp < lim && f->wbuf[p->off + lcp] == f->wbuf[w->off + lcp])
        lcp++;
      if (lcp == w->len && lcp == p->len)
        continue; /* duplicate */
    }
    nn += w->len - lcp;
    idx[m++] = idx[i];
  }

  nodes = imc_calloc(mem, nn, sizeof(*nodes));
  if (nn <= SIZE_MAX / sizeof(*rg)) /* only a 32-bit size_t can fail this */
    rg = imc_malloc(mem, nn * sizeof(*rg));
  if (nodes == NULL || rg == NULL) {
    imc_free(mem, rg);
    imc_free(mem, nodes);
    imc_free(mem, idx);
    return IMC_ERR_NOMEM;
  }

  /* Breadth-first: state u's children are the groups of its words that
   * share the byte at position depth(u), appended in label order. */
  size_t next = 1;
  rg[0] = (frange){0, (uint32_t)m, 0};
  for (size_t u = 0; u < next; u++) {
    uint32_t lo = rg[u].lo, hi = rg[u].hi, d = rg[u].depth;
    if (lo < hi && f->words[idx[lo]].len == d) {
      /* sorted and unique: the word equal to the prefix comes first */
      nodes[u].mlen = d;
      nodes[u].nmatch = 1;
      lo++;
    }
    nodes[u].child = (uint32_t)next;
    while (lo < hi) {
      uint8_t c = f->wbuf[f->words[idx[lo]].off + d];
      uint32_t j = lo + 1;
      while (j < hi && f->wbuf[f->words[idx[j]].off + d] == c)
        j++;
      nodes[next].label = c;
      rg[next] = (frange){lo, j, d + 1};
      next++;
      nodes[u].nchild++;
      lo = j;
    }
  }
  imc_free(mem, rg);
  imc_free(mem, idx);

  /* Fail links in breadth-first order: a state's fail target is shallower,
   * so its own fail link and match data are final by then. */
  for (size_t u = 0; u < nn; u++) {
    for (uint32_t v = nodes[u].child; v < nodes[u].child + nodes[u].nchild;
         v++) {
      uint32_t fl = u == 0 ? 0 : step(nodes, nodes[u].fail, nodes[v].label);
      nodes[v].fail = fl;
      if (nodes[v].mlen == 0)
        nodes[v].mlen = nodes[fl].mlen;
      nodes[v].nmatch += nodes[fl].nmatch;
    }
  }

  imc_free(mem, f->wbuf);
  imc_free(mem, f->words);
  f->wbuf = NULL;
  f->words = NULL;
  f->wbuf_len = f->wbuf_cap = f->words_cap = 0;
  f->nwords = m;
  f->nodes = nodes;
  f->nnodes = nn;
  return 0;
}

int imc_filter_match(const imc_filter *f, const uint8_t *text, size_t len) {
  if (f == NULL || f->nodes == NULL || (text == NULL && len > 0))
    return IMC_ERR_INVALID_ARGUMENT;
  uint32_t s = 0;
  for (size_t i = 0; i < len; i++) {
    s = step(f->nodes, s, fold(text[i]));
    if (f->nodes[s].nmatch != 0)
      return 1;
  }
  return 0;
}

int imc_filter_mask(const imc_filter *f, const uint8_t *text, size_t len,
                    uint8_t *out, size_t outcap, size_t *outlen) {
  if (f == NULL || f->nodes == NULL || outlen == NULL ||
      (len > 0 && (text == NULL || out == NULL)))
    return IMC_ERR_INVALID_ARGUMENT;
  if (outcap < len)
    return IMC_ERR_TOO_LARGE;

  /* Pass 1: out[i] = 1 for every byte inside an occurrence. Matches are
   * found in order of their end and only the longest one ending at each
   * byte matters (shorter ones are inside it); keeping the last covered
   * run [run_lo, run_hi] avoids re-marking what overlapping matches share. */
  size_t count = 0, run_lo = 0, run_hi = 0;
  int have_run = 0;
  uint32_t s = 0;
  if (len > 0)
    memset(out, 0, len);
  for (size_t i = 0; i < len; i++) {
    s = step(f->nodes, s, fold(text[i]));
    const fnode *st = &f->nodes[s];
    if (st->nmatch == 0)
      continue;
    count += st->nmatch;
    size_t start = i + 1 - st->mlen;
    if (!have_run || start > run_hi + 1) {
      memset(out + start, 1, st->mlen);
      run_lo = start;
      have_run = 1;
    } else {
      memset(out + run_hi + 1, 1, i - run_hi);
      if (start < run_lo) {
        memset(out + start, 1, run_lo - start);
        run_lo = start;
      }
    }
    run_hi = i;
  }

  /* Pass 2: compact in place. Words are well formed, so an occurrence
   * starts and ends on character boundaries of this decoding even when
   * the text around it is not valid UTF-8. The write position never
   * passes the read position, so unread marks survive. */
  size_t o = 0;
  for (size_t i = 0; i < len;) {
    size_t k = utf8_seq_len(text + i, len - i);
    if (k == 0)
      k = 1;
    int masked = 0;
    for (size_t j = 0; j < k; j++)
      masked |= out[i + j];
    if (masked) {
      out[o++] = '*';
    } else {
      memcpy(out + o, text + i, k);
      o += k;
    }
    i += k;
  }
  *outlen = o;
  return count > INT_MAX ? INT_MAX : (int)count;
}

int imc_filter_from_words(imc_filter **out, const uint8_t *words, size_t len,
                          const imc_mem *mem) {
  if (out == NULL || (words == NULL && len > 0))
    return IMC_ERR_INVALID_ARGUMENT;
  if (mem == NULL)
    mem = imc_mem_default();
  const uint8_t *buf = words;
  imc_filter *f;
  int rv = imc_filter_new(&f, mem);
  if (rv != 0)
    return rv;
  size_t pos = 0;
  if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0)
    pos = 3;
  size_t n;
  const uint8_t *line;
  while (rv == 0 && imc_next_line(buf, len, &pos, &line, &n))
    rv = imc_filter_add(f, (const char *)line, n);
  if (rv == 0)
    rv = imc_filter_build(f);
  if (rv != 0) {
    imc_filter_del(f);
    return rv;
  }
  *out = f;
  return 0;
}
