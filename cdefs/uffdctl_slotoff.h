/*
 * The offset of a slotted class's slot: what uffdctl._fastpath (UffdMsg, decoded by offset) and
 * uffdctl._slots (SlotMaker) write into.  -1, no exception set, when ``name`` is not a writable object
 * slot of ``type`` (missing, a property, a dataclass without slots=...): the caller then calls the class.
 */
#ifndef UFFDCTL_SLOTOFF_H
#define UFFDCTL_SLOTOFF_H

#include <Python.h>
#include <structmember.h>

static Py_ssize_t slot_offset(PyObject *type, const char *name)
{
	Py_ssize_t off = -1;
	PyObject *d = PyObject_GetAttrString(type, name);
	if (!d) {
		PyErr_Clear();
		return -1;
	}
	if (Py_TYPE(d) == &PyMemberDescr_Type) {
		PyMemberDef *mb = ((PyMemberDescrObject *)d)->d_member;
		if (mb->type == T_OBJECT_EX && !(mb->flags & READONLY))
			off = mb->offset;
	}
	Py_DECREF(d);
	return off;
}

#endif
