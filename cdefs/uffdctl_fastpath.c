/*
 * uffdctl._fastpath: the per-call fast path of KernelUffd (copy, zeropage, writeprotect,
 * read_msgs, wait_msgs), as METH_FASTCALL methods of one small object per uffd.
 *
 * Why a CPython-API module next to the cffi one: a cffi API-mode call of a 5-argument
 * function costs ~0.37 us here before it reaches C (an argument tuple, PyArg_UnpackTuple,
 * one out-of-line conversion per integer, errno saved and restored), a METH_FASTCALL
 * method ~0.08 us (measured: docs/performance.md).  On the per-page and fault paths that
 * is most of what Python adds to a system call.  The bindings stay cffi's (uffdctl._uffd):
 * this module holds nothing but these five calls, and KernelUffd falls back to the cffi
 * wrappers when it is not built or UFFDCTL_NO_FASTPATH=1 (tests hold both paths to the
 * same results).
 *
 * Semantics are the Python methods': the result field is returned; on failure the Python
 * callable ``fail(name, -errno, start, len, done, closed)`` builds the exception (``done``:
 * the struct's result field, the partial progress, or None where the kernel did not write
 * it) and it is raised.  The GIL is released around every system call: a UFFDIO_COPY may
 * fault on its source, and a read may wait.  Messages are decoded straight into UffdMsg
 * (its slots written by offset, as its dataclass __init__ would) with the time of the read.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "uffd_uapi.h"
#include "uffdctl_readfirst.h"
#include "uffdctl_slotoff.h"

#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *Py_NewRef(PyObject *o) { Py_INCREF(o); return o; }
#endif

#define NFIELDS 11	/* UffdMsg: event flags address ptid ufd from_ to len start end ts_ns */
#define STACK_MSGS 64
#define UNWRITTEN INT64_MIN

static const char *const msg_fields[NFIELDS] = { "event", "flags", "address", "ptid", "ufd", "from_", "to",
						  "len", "start", "end", "ts_ns" };

typedef struct {
	PyObject_HEAD
	int fd;
	int poll_first;		/* a blocking uffd: poll before read (a blocking read ignores the timeout) */
	PyObject *fail;		/* fail(name, r, start, len, done, closed) -> exception */
	PyObject *msg_type;	/* UffdMsg */
	PyObject *decode_event;	/* decode_event(ev, a0, a1, a2, ts) -> UffdMsg, for non-pagefault events */
	Py_ssize_t off[NFIELDS];	/* UffdMsg slot offsets, or off[0] < 0: call msg_type instead */
} FastUffd;

static PyObject *zero;

/* -- arguments ---------------------------------------------------------------------------- */
/* PyLong_AsUnsignedLong: 64 bits on x86-64, and a digit loop where PyLong_AsUnsignedLongLong takes
 * _PyLong_AsByteArray for anything above 30 bits (every user-space address). */
_Static_assert(sizeof(unsigned long) == sizeof(__u64), "unsigned long is 64 bits");

static int as_u64(PyObject *o, __u64 *v)
{
	if (PyLong_Check(o)) {
		*v = PyLong_AsUnsignedLong(o);
	} else {
		PyObject *i = PyNumber_Index(o);
		if (!i)
			return -1;
		*v = PyLong_AsUnsignedLong(i);
		Py_DECREF(i);
	}
	return (*v == (__u64)-1 && PyErr_Occurred()) ? -1 : 0;
}

/* Positional and keyword arguments by the Python method's names: names[0..nreq) required. */
static int parse(const char *fn, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
		 const char *const *names, int nreq, int ntot, PyObject **out)
{
	int i;
	if (nargs > ntot) {
		PyErr_Format(PyExc_TypeError, "%s() takes at most %d arguments (%zd given)", fn, ntot, nargs);
		return -1;
	}
	for (i = 0; i < ntot; i++)
		out[i] = i < nargs ? args[i] : NULL;
	if (kwnames) {
		Py_ssize_t k, nk = PyTuple_GET_SIZE(kwnames);
		for (k = 0; k < nk; k++) {
			PyObject *key = PyTuple_GET_ITEM(kwnames, k);
			for (i = 0; i < ntot; i++)
				if (PyUnicode_CompareWithASCIIString(key, names[i]) == 0)
					break;
			if (i == ntot) {
				PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fn, key);
				return -1;
			}
			if (out[i]) {
				PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fn, names[i]);
				return -1;
			}
			out[i] = args[nargs + k];
		}
	}
	for (i = 0; i < nreq; i++)
		if (!out[i]) {
			PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fn, names[i]);
			return -1;
		}
	return 0;
}

static PyObject *raise_fail(FastUffd *self, const char *name, long r, PyObject *start, PyObject *len,
			    int64_t done, int have_done)
{
	PyObject *d, *exc;
	if (have_done && done != UNWRITTEN)
		d = PyLong_FromLongLong(done);
	else
		d = Py_NewRef(Py_None);
	if (!d)
		return NULL;
	exc = PyObject_CallFunction(self->fail, "slOOOO", name, r, start ? start : Py_None, len ? len : Py_None, d,
				    self->fd < 0 ? Py_True : Py_False);
	Py_DECREF(d);
	if (!exc)
		return NULL;
	PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
	Py_DECREF(exc);
	return NULL;
}

/* -- the range ioctls ---------------------------------------------------------------------- */
static const char *const copy_names[] = { "dst", "src", "len", "mode" };
static const char *const range_names[] = { "start", "len", "mode" };

static PyObject *fast_copy(FastUffd *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
	PyObject *a[4];
	struct uffdio_copy c = { .mode = 0, .copy = UNWRITTEN };
	int r, fd = self->fd;
	if (nargs >= 3 && nargs <= 4 && !kwnames) {
		a[0] = args[0], a[1] = args[1], a[2] = args[2], a[3] = nargs > 3 ? args[3] : NULL;
	} else if (parse("copy", args, nargs, kwnames, copy_names, 3, 4, a) < 0) {
		return NULL;
	}
	if (as_u64(a[0], &c.dst) || as_u64(a[1], &c.src) || as_u64(a[2], &c.len) || (a[3] && as_u64(a[3], &c.mode)))
		return NULL;
	Py_BEGIN_ALLOW_THREADS
	r = ioctl(fd, UFFDIO_COPY, &c);
	if (r < 0)
		r = -errno;
	Py_END_ALLOW_THREADS
	if (r < 0)
		return raise_fail(self, "UFFDIO_COPY", r, a[0], a[2], c.copy, 1);
	if ((__u64)c.copy == c.len && PyLong_CheckExact(a[2]))
		return Py_NewRef(a[2]);		/* all of it: the caller's len (no int made) */
	return PyLong_FromLongLong(c.copy == UNWRITTEN ? 0 : c.copy);
}

static PyObject *fast_zeropage(FastUffd *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
	PyObject *a[3];
	struct uffdio_zeropage z = { .mode = 0, .zeropage = UNWRITTEN };
	int r, fd = self->fd;
	if (nargs >= 2 && nargs <= 3 && !kwnames) {
		a[0] = args[0], a[1] = args[1], a[2] = nargs > 2 ? args[2] : NULL;
	} else if (parse("zeropage", args, nargs, kwnames, range_names, 2, 3, a) < 0) {
		return NULL;
	}
	if (as_u64(a[0], &z.range.start) || as_u64(a[1], &z.range.len) || (a[2] && as_u64(a[2], &z.mode)))
		return NULL;
	Py_BEGIN_ALLOW_THREADS
	r = ioctl(fd, UFFDIO_ZEROPAGE, &z);
	if (r < 0)
		r = -errno;
	Py_END_ALLOW_THREADS
	if (r < 0)
		return raise_fail(self, "UFFDIO_ZEROPAGE", r, a[0], a[1], z.zeropage, 1);
	if ((__u64)z.zeropage == z.range.len && PyLong_CheckExact(a[1]))
		return Py_NewRef(a[1]);
	return PyLong_FromLongLong(z.zeropage == UNWRITTEN ? 0 : z.zeropage);
}

static PyObject *fast_writeprotect(FastUffd *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
	PyObject *a[3];
	struct uffdio_writeprotect w = { .mode = 0 };
	int r, fd = self->fd;
	if (nargs >= 2 && nargs <= 3 && !kwnames) {
		a[0] = args[0], a[1] = args[1], a[2] = nargs > 2 ? args[2] : NULL;
	} else if (parse("writeprotect", args, nargs, kwnames, range_names, 2, 3, a) < 0) {
		return NULL;
	}
	if (as_u64(a[0], &w.range.start) || as_u64(a[1], &w.range.len) || (a[2] && as_u64(a[2], &w.mode)))
		return NULL;
	Py_BEGIN_ALLOW_THREADS
	r = ioctl(fd, UFFDIO_WRITEPROTECT, &w);
	if (r < 0)
		r = -errno;
	Py_END_ALLOW_THREADS
	if (r < 0)
		return raise_fail(self, "UFFDIO_WRITEPROTECT", r, a[0], a[1], 0, 0);
	Py_RETURN_NONE;
}

/* -- messages ------------------------------------------------------------------------------ */
static PyObject *new_msg(FastUffd *self, PyObject **v)
{
	PyObject *m;
	int i;
	if (self->off[0] < 0) {
		m = PyObject_Vectorcall(self->msg_type, v, NFIELDS, NULL);
		for (i = 0; i < NFIELDS; i++)
			Py_DECREF(v[i]);
		return m;
	}
	m = ((PyTypeObject *)self->msg_type)->tp_alloc((PyTypeObject *)self->msg_type, 0);
	if (!m) {
		for (i = 0; i < NFIELDS; i++)
			Py_DECREF(v[i]);
		return NULL;
	}
	for (i = 0; i < NFIELDS; i++)	/* the slots are NULL: each takes its reference */
		*(PyObject **)((char *)m + self->off[i]) = v[i];
	return m;
}

static PyObject *decode(FastUffd *self, const struct uffd_msg *msgs, Py_ssize_t n)
{
	struct timespec ts;
	PyObject *out, *tsv;
	Py_ssize_t i;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	tsv = PyLong_FromLongLong((long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
	out = tsv ? PyList_New(n) : NULL;
	if (!out) {
		Py_XDECREF(tsv);
		return NULL;
	}
	for (i = 0; i < n; i++) {
		const struct uffd_msg *m = &msgs[i];
		PyObject *o;
		if (m->event == UFFD_EVENT_PAGEFAULT) {
			PyObject *v[NFIELDS];
			int k;
			v[0] = PyLong_FromLong(m->event);
			v[1] = PyLong_FromUnsignedLongLong(m->arg.pagefault.flags);
			v[2] = PyLong_FromUnsignedLongLong(m->arg.pagefault.address);
			v[3] = PyLong_FromUnsignedLong(m->arg.pagefault.feat.ptid);
			for (k = 4; k < NFIELDS - 1; k++)
				v[k] = Py_NewRef(zero);
			v[NFIELDS - 1] = Py_NewRef(tsv);
			if (!v[1] || !v[2] || !v[3]) {
				for (k = 0; k < NFIELDS; k++)
					Py_XDECREF(v[k]);
				o = NULL;
			} else {
				o = new_msg(self, v);
			}
		} else {
			uint64_t a[3];
			memcpy(a, (const char *)m + 8, sizeof(a));	/* the 24-byte arg as three u64 */
			o = PyObject_CallFunction(self->decode_event, "iKKKO", (int)m->event, (unsigned long long)a[0],
						  (unsigned long long)a[1], (unsigned long long)a[2], tsv);
		}
		if (!o) {
			Py_DECREF(out);
			Py_DECREF(tsv);
			return NULL;
		}
		PyList_SET_ITEM(out, i, o);
	}
	Py_DECREF(tsv);
	return out;
}

/* read(2), or with wait the read-first wait of uffdctl_poll_read(): bytes read, 0 on timeout, -errno. */
static long do_read(int fd, void *buf, size_t count, int wait, int timeout_ms, int poll_first)
{
	if (!wait) {
		ssize_t r = read(fd, buf, count);
		return r < 0 ? -errno : r;
	}
	return (long)uffdctl_read_first(fd, buf, count, timeout_ms, poll_first);
}

static PyObject *msgs(FastUffd *self, Py_ssize_t max, int wait, int timeout_ms, int empty_errno)
{
	struct uffd_msg stack[STACK_MSGS], *buf = stack;
	long r;
	int fd = self->fd;
	PyObject *out;
	if (max < 0) {
		PyErr_SetString(PyExc_OverflowError, "max must not be negative");
		return NULL;
	}
	if (max > STACK_MSGS && !(buf = PyMem_RawMalloc(max * sizeof(*buf))))
		return PyErr_NoMemory();
	Py_BEGIN_ALLOW_THREADS
	r = do_read(fd, buf, (size_t)max * sizeof(*buf), wait, timeout_ms, self->poll_first);
	Py_END_ALLOW_THREADS
	if (r > 0)
		out = decode(self, buf, r / (long)sizeof(*buf));
	else if (r == 0 || r == -empty_errno)
		out = PyList_New(0);
	else
		out = raise_fail(self, "read", r, NULL, NULL, 0, 0);
	if (buf != stack)
		PyMem_RawFree(buf);
	return out;
}

static int as_max(PyObject *o, Py_ssize_t *v)
{
	*v = o ? PyLong_AsSsize_t(o) : 64;
	return (*v == -1 && PyErr_Occurred()) ? -1 : 0;
}

static const char *const read_names[] = { "max" };
static const char *const wait_names[] = { "timeout", "max" };

static PyObject *fast_read_msgs(FastUffd *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
	PyObject *a[1];
	Py_ssize_t max;
	if (parse("read_msgs", args, nargs, kwnames, read_names, 0, 1, a) < 0 || as_max(a[0], &max) < 0)
		return NULL;
	return msgs(self, max, 0, 0, EAGAIN);
}

static PyObject *fast_wait_msgs(FastUffd *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
	PyObject *a[2];
	Py_ssize_t max;
	int ms;
	if (parse("wait_msgs", args, nargs, kwnames, wait_names, 0, 2, a) < 0 || as_max(a[1], &max) < 0)
		return NULL;
	if (!a[0] || a[0] == Py_None) {
		ms = -1;
	} else {	/* as the Python method: int(timeout * 1000) if timeout > 0 else 0 */
		double t = PyFloat_AsDouble(a[0]);
		if (t == -1.0 && PyErr_Occurred())
			return NULL;
		ms = t > 0 ? (t * 1000 >= INT32_MAX ? INT32_MAX : (int)(t * 1000)) : 0;
	}
	return msgs(self, max, 1, ms, 0);
}

/* -- the type ------------------------------------------------------------------------------ */
static int slot_offsets(FastUffd *self)
{
	int i;
	PyTypeObject *t = (PyTypeObject *)self->msg_type;
	self->off[0] = -1;
	if (!PyType_Check(self->msg_type) || t->tp_alloc == NULL || t->tp_new == NULL)
		return 0;
	for (i = 0; i < NFIELDS; i++) {
		self->off[i] = slot_offset(self->msg_type, msg_fields[i]);
		if (self->off[i] < 0) {
			self->off[0] = -1;	/* not a slotted class: call it */
			return 0;
		}
	}
	return 0;
}

static int fast_init(FastUffd *self, PyObject *args, PyObject *kw)
{
	PyObject *fail, *msg_type, *decode_event;
	int fd, poll_first;
	if (!PyArg_ParseTuple(args, "iiOOO", &fd, &poll_first, &fail, &msg_type, &decode_event))
		return -1;
	self->fd = fd;
	self->poll_first = poll_first;
	Py_XSETREF(self->fail, Py_NewRef(fail));
	Py_XSETREF(self->msg_type, Py_NewRef(msg_type));
	Py_XSETREF(self->decode_event, Py_NewRef(decode_event));
	return slot_offsets(self);
}

static void fast_dealloc(FastUffd *self)
{
	Py_XDECREF(self->fail);
	Py_XDECREF(self->msg_type);
	Py_XDECREF(self->decode_event);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef fast_methods[] = {
	{ "copy", (PyCFunction)(void (*)(void))fast_copy, METH_FASTCALL | METH_KEYWORDS,
	  "copy(dst, src, len, mode=0) -> bytes copied (UFFDIO_COPY)" },
	{ "zeropage", (PyCFunction)(void (*)(void))fast_zeropage, METH_FASTCALL | METH_KEYWORDS,
	  "zeropage(start, len, mode=0) -> bytes zeroed (UFFDIO_ZEROPAGE)" },
	{ "writeprotect", (PyCFunction)(void (*)(void))fast_writeprotect, METH_FASTCALL | METH_KEYWORDS,
	  "writeprotect(start, len, mode=0) (UFFDIO_WRITEPROTECT)" },
	{ "read_msgs", (PyCFunction)(void (*)(void))fast_read_msgs, METH_FASTCALL | METH_KEYWORDS,
	  "read_msgs(max=64) -> [UffdMsg]: one read(2); [] when nothing is queued" },
	{ "wait_msgs", (PyCFunction)(void (*)(void))fast_wait_msgs, METH_FASTCALL | METH_KEYWORDS,
	  "wait_msgs(timeout=None, max=64) -> [UffdMsg]: read first, poll(2) when nothing is queued; [] on timeout" },
	{ NULL }
};

static PyMemberDef fast_members[] = {
	{ "fd", T_INT, offsetof(FastUffd, fd), 0, "the uffd (-1 once closed)" },
	{ NULL }
};

static PyTypeObject FastUffdType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "uffdctl._fastpath.FastUffd",
	.tp_basicsize = sizeof(FastUffd),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "FastUffd(fd, poll_first, fail, msg_type, decode_event): KernelUffd's per-call fast path",
	.tp_new = PyType_GenericNew,
	.tp_init = (initproc)fast_init,
	.tp_dealloc = (destructor)fast_dealloc,
	.tp_methods = fast_methods,
	.tp_members = fast_members,
};

static struct PyModuleDef fastpath_module = {
	PyModuleDef_HEAD_INIT, "uffdctl._fastpath", "KernelUffd's per-call fast path (see uffdctl_fastpath.c)", -1, NULL
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
	PyObject *m;
	if (PyType_Ready(&FastUffdType) < 0)
		return NULL;
	zero = PyLong_FromLong(0);
	m = PyModule_Create(&fastpath_module);
	if (!m)
		return NULL;
	if (PyModule_AddObject(m, "FastUffd", Py_NewRef((PyObject *)&FastUffdType)) < 0) {
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
