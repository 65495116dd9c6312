/*
 * uffdctl._slots: SlotMaker(cls, names, fixed) -- a callable that makes an instance of a slotted class
 * from positional values for the slots ``names`` and the values ``fixed`` (a tuple of (name, value)
 * pairs) for the others.  It does what ``o = object.__new__(cls)`` followed by one store per slot does,
 * writing each slot by its offset: no __init__ frame, no argument binding.
 *
 * Why: the emulator makes about seven small objects per emulated fault round trip (a struct vm_fault,
 * a wait-queue entry, the uffd_msg, the handler's log entry, two PTEs, a folio).  Made in Python each
 * costs ~2,500 instructions, most of it the call; made here ~500 (callgrind, docs/performance.md).
 * The Python constructors stay the specification: uffdctl/emu/slots.py falls back to them when this
 * module is not built or UFFDCTL_NO_FASTPATH=1, and tests/test_emu.py holds both equal slot by slot.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "uffdctl_slotoff.h"

typedef struct {
	PyObject_HEAD
	vectorcallfunc vectorcall;
	PyTypeObject *type;
	Py_ssize_t npos;	/* positional values */
	Py_ssize_t nall;	/* slots written: the positional ones, then the fixed ones */
	Py_ssize_t *off;	/* nall offsets */
	PyObject **val;		/* nall - npos fixed values */
} SlotMaker;

static PyObject *maker_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
	SlotMaker *m = (SlotMaker *)op;
	Py_ssize_t i, n = PyVectorcall_NARGS(nargsf);
	PyObject *o;
	if (n != m->npos || (kwnames && PyTuple_GET_SIZE(kwnames))) {
		PyErr_Format(PyExc_TypeError, "making %s takes exactly %zd positional arguments (%zd given)",
			     m->type->tp_name, m->npos, n);
		return NULL;
	}
	o = m->type->tp_alloc(m->type, 0);	/* object.__new__(cls): zeroed, GC-tracked, the type held */
	if (!o)
		return NULL;
	for (i = 0; i < n; i++)
		*(PyObject **)((char *)o + m->off[i]) = Py_NewRef(args[i]);
	for (; i < m->nall; i++)
		*(PyObject **)((char *)o + m->off[i]) = Py_NewRef(m->val[i - n]);
	return o;
}

static void maker_dealloc(SlotMaker *m)
{
	Py_ssize_t i;
	if (m->val)
		for (i = 0; i < m->nall - m->npos; i++)
			Py_XDECREF(m->val[i]);
	PyMem_Free(m->val);
	PyMem_Free(m->off);
	Py_XDECREF(m->type);
	Py_TYPE(m)->tp_free((PyObject *)m);
}

static int set_offset(SlotMaker *m, Py_ssize_t i, PyObject *name)
{
	Py_ssize_t off;
	if (!PyUnicode_Check(name)) {
		PyErr_SetString(PyExc_TypeError, "a slot name is a str");
		return -1;
	}
	off = slot_offset((PyObject *)m->type, PyUnicode_AsUTF8(name));
	if (off < 0) {
		if (!PyErr_Occurred())
			PyErr_Format(PyExc_TypeError, "%s.%U is not a writable object slot", m->type->tp_name, name);
		return -1;
	}
	m->off[i] = off;
	return 0;
}

static PyObject *maker_new(PyTypeObject *subtype, PyObject *args, PyObject *kw)
{
	PyObject *cls, *names, *fixed;
	SlotMaker *m;
	Py_ssize_t i, nf;
	if (kw && PyDict_GET_SIZE(kw)) {
		PyErr_SetString(PyExc_TypeError, "SlotMaker(cls, names, fixed) takes no keywords");
		return NULL;
	}
	if (!PyArg_ParseTuple(args, "O!O!O!", &PyType_Type, &cls, &PyTuple_Type, &names, &PyTuple_Type, &fixed))
		return NULL;
	if (((PyTypeObject *)cls)->tp_alloc == NULL) {
		PyErr_SetString(PyExc_TypeError, "the class cannot be allocated");
		return NULL;
	}
	m = (SlotMaker *)subtype->tp_alloc(subtype, 0);
	if (!m)
		return NULL;
	m->vectorcall = maker_vectorcall;
	m->type = (PyTypeObject *)Py_NewRef(cls);
	m->npos = PyTuple_GET_SIZE(names);
	nf = PyTuple_GET_SIZE(fixed);
	m->nall = m->npos + nf;
	m->off = PyMem_Calloc(m->nall ? m->nall : 1, sizeof(Py_ssize_t));
	m->val = PyMem_Calloc(nf ? nf : 1, sizeof(PyObject *));
	if (!m->off || !m->val) {
		Py_DECREF(m);
		return PyErr_NoMemory();
	}
	for (i = 0; i < m->npos; i++)
		if (set_offset(m, i, PyTuple_GET_ITEM(names, i)) < 0)
			goto fail;
	for (i = 0; i < nf; i++) {
		PyObject *pair = PyTuple_GET_ITEM(fixed, i);
		if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
			PyErr_SetString(PyExc_TypeError, "fixed is a tuple of (name, value) pairs");
			goto fail;
		}
		if (set_offset(m, m->npos + i, PyTuple_GET_ITEM(pair, 0)) < 0)
			goto fail;
		m->val[i] = Py_NewRef(PyTuple_GET_ITEM(pair, 1));
	}
	return (PyObject *)m;
fail:
	Py_DECREF(m);
	return NULL;
}

static PyTypeObject SlotMakerType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "uffdctl._slots.SlotMaker",
	.tp_basicsize = sizeof(SlotMaker),
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
	.tp_doc = "SlotMaker(cls, names, fixed): maker(*values) -> a cls with values in the slots names, fixed in the rest",
	.tp_new = maker_new,
	.tp_dealloc = (destructor)maker_dealloc,
	.tp_vectorcall_offset = offsetof(SlotMaker, vectorcall),
	.tp_call = PyVectorcall_Call,
};

static struct PyModuleDef slots_module = {
	PyModuleDef_HEAD_INIT, "uffdctl._slots", "Instances of slotted classes, made by slot offset (see uffdctl_slots.c)",
	-1, NULL
};

PyMODINIT_FUNC PyInit__slots(void)
{
	PyObject *m;
	if (PyType_Ready(&SlotMakerType) < 0)
		return NULL;
	m = PyModule_Create(&slots_module);
	if (!m)
		return NULL;
	if (PyModule_AddObject(m, "SlotMaker", Py_NewRef((PyObject *)&SlotMakerType)) < 0) {
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
