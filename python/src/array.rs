//! `ferroclip.Array`: a batch's pixels or token ids handed to Python without a copy.
//!
//! It exports the buffer protocol (`numpy.asarray`, `memoryview`) and DLPack
//! (`torch.from_dlpack`, `numpy.from_dlpack`). Every view keeps the memory alive: buffer
//! views hold the `Array`, DLPack tensors an `Arc` of its storage, so a batch's buffer goes
//! back to the loader's pool only when the last view is gone.
use std::ffi::{c_int, c_void, CStr};
use std::sync::Arc;

use dataloader::BatchImages;
use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;

/// The element types a batch has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    U8,
    I64,
}

impl Dtype {
    fn itemsize(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::U8 => 1,
            Dtype::I64 => 8,
        }
    }

    /// The struct-module format of the buffer protocol (native order, standard sizes).
    fn format(self) -> &'static CStr {
        match self {
            Dtype::F32 => c"f",
            Dtype::U8 => c"B",
            Dtype::I64 => c"q",
        }
    }

    /// NumPy's name of the type.
    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::U8 => "uint8",
            Dtype::I64 => "int64",
        }
    }

    /// DLPack's (type code, bits): 0 int, 1 uint, 2 float.
    fn dlpack(self) -> DLDataType {
        let (code, bits) = match self {
            Dtype::F32 => (2, 32),
            Dtype::U8 => (1, 8),
            Dtype::I64 => (0, 64),
        };
        DLDataType { code, bits, lanes: 1 }
    }
}

/// Memory an [`Array`] views: a loader buffer (returned to its pool when dropped) or a vector.
enum Owned {
    F32(BatchImages<f32>),
    U8(BatchImages<u8>),
    I64(Vec<i64>),
}

/// The memory and where it starts. The pointer is taken once, from the owner, when the
/// storage is made; the owner is never touched again until it is dropped, so Python may
/// read and write through the pointer (as NumPy arrays of it do).
struct Storage {
    ptr: *mut c_void,
    bytes: usize,
    _owner: Owned,
}

// SAFETY: the owner is only moved and dropped; the memory behind `ptr` is plain data whose
// readers and writers are Python's (numpy's, torch's) concern, as for any shared buffer.
unsafe impl Send for Storage {}
unsafe impl Sync for Storage {}

/// An n-dimensional C-order array of one of the [`Dtype`]s.
#[pyclass(frozen, module = "ferroclip")]
pub struct Array {
    storage: Arc<Storage>,
    dtype: Dtype,
    /// Shape and strides (bytes), in the buffer protocol's `Py_ssize_t`.
    shape: Vec<isize>,
    strides: Vec<isize>,
}

impl Array {
    fn new(owner: Owned, dtype: Dtype, shape: &[usize]) -> Self {
        let mut owner = owner;
        let (ptr, len) = match &mut owner {
            Owned::F32(images) => (images.as_mut_ptr() as *mut c_void, images.len()),
            Owned::U8(images) => (images.as_mut_ptr() as *mut c_void, images.len()),
            Owned::I64(values) => (values.as_mut_ptr() as *mut c_void, values.len()),
        };
        assert_eq!(
            len,
            shape.iter().product::<usize>(),
            "an array's shape covers its memory"
        );
        let mut strides = vec![dtype.itemsize() as isize; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * shape[d + 1] as isize;
        }
        Self {
            storage: Arc::new(Storage {
                ptr,
                bytes: len * dtype.itemsize(),
                _owner: owner,
            }),
            dtype,
            shape: shape.iter().map(|&n| n as isize).collect(),
            strides,
        }
    }

    /// f32 pixels of a batch.
    pub fn from_f32_images(images: BatchImages<f32>, shape: &[usize]) -> Self {
        Self::new(Owned::F32(images), Dtype::F32, shape)
    }

    /// u8 pixel levels of a batch.
    pub fn from_u8_images(images: BatchImages<u8>, shape: &[usize]) -> Self {
        Self::new(Owned::U8(images), Dtype::U8, shape)
    }

    /// Token ids (or any i64 values).
    pub fn from_i64(values: Vec<i64>, shape: &[usize]) -> Self {
        Self::new(Owned::I64(values), Dtype::I64, shape)
    }
}

#[pymethods]
impl Array {
    /// The shape, as a tuple.
    #[getter]
    fn shape(&self) -> Vec<usize> {
        self.shape.iter().map(|&n| n as usize).collect()
    }

    /// `float32`, `uint8` or `int64` (NumPy's names).
    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype.name()
    }

    /// Bytes of data.
    #[getter]
    fn nbytes(&self) -> usize {
        self.storage.bytes
    }

    fn __len__(&self) -> usize {
        self.shape.first().map_or(1, |&n| n as usize)
    }

    fn __repr__(&self) -> String {
        format!("ferroclip.Array(shape={:?}, dtype={})", self.shape(), self.dtype.name())
    }

    /// The buffer protocol: a C-contiguous view of the whole array.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("no view to fill"));
        }
        let this = slf.get();
        // SAFETY: `view` is the caller's Py_buffer to fill; shape and strides live in the
        // array, which the view keeps alive through `obj`.
        unsafe {
            (*view).obj = slf.clone().into_any().into_ptr();
            (*view).buf = this.storage.ptr;
            (*view).len = this.storage.bytes as isize;
            (*view).readonly = 0;
            (*view).itemsize = this.dtype.itemsize() as isize;
            (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
                this.dtype.format().as_ptr() as *mut _
            } else {
                std::ptr::null_mut()
            };
            (*view).ndim = this.shape.len() as c_int;
            (*view).shape = if flags & ffi::PyBUF_ND == ffi::PyBUF_ND {
                this.shape.as_ptr() as *mut isize
            } else {
                std::ptr::null_mut()
            };
            (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
                this.strides.as_ptr() as *mut isize
            } else {
                std::ptr::null_mut()
            };
            (*view).suboffsets = std::ptr::null_mut();
            (*view).internal = std::ptr::null_mut();
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}

    /// DLPack's device of the data: the CPU.
    fn __dlpack_device__(&self) -> (i32, i32) {
        (DL_CPU, 0)
    }

    /// A DLPack capsule of the array (no copy). `copy=True` and devices other than the
    /// CPU are refused, as the DLPack protocol asks of a producer that cannot honour them.
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<Bound<'py, PyAny>>,
        max_version: Option<Bound<'py, PyAny>>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = (stream, max_version);
        if copy == Some(true) {
            return Err(PyBufferError::new_err(
                "ferroclip arrays are exported without a copy; copy the result instead",
            ));
        }
        if let Some(device) = dl_device {
            if device != (DL_CPU, 0) {
                return Err(PyBufferError::new_err(format!(
                    "ferroclip arrays live on the CPU (DLPack device (1, 0)), not {device:?}"
                )));
            }
        }
        let context = Box::new(DlpackContext {
            _storage: Arc::clone(&self.storage),
            shape: self.shape.iter().map(|&n| n as i64).collect(),
            strides: self
                .strides
                .iter()
                .map(|&s| s as i64 / self.dtype.itemsize() as i64)
                .collect(),
        });
        let managed = Box::new(DLManagedTensor {
            dl_tensor: DLTensor {
                data: self.storage.ptr,
                device: DLDevice {
                    device_type: DL_CPU,
                    device_id: 0,
                },
                ndim: self.shape.len() as i32,
                dtype: self.dtype.dlpack(),
                shape: context.shape.as_ptr() as *mut i64,
                strides: context.strides.as_ptr() as *mut i64,
                byte_offset: 0,
            },
            manager_ctx: Box::into_raw(context) as *mut c_void,
            deleter: Some(delete_managed),
        });
        let raw = Box::into_raw(managed);
        // SAFETY: a capsule over the managed tensor; its destructor frees it unless a
        // consumer took it (renamed the capsule), which then calls the deleter itself.
        let capsule = unsafe { ffi::PyCapsule_New(raw as *mut c_void, DLTENSOR.as_ptr(), Some(capsule_destructor)) };
        if capsule.is_null() {
            // SAFETY: the capsule was not made; nobody else holds the tensor.
            unsafe { delete_managed(raw) };
            return Err(PyErr::fetch(py));
        }
        // SAFETY: a new reference just returned by PyCapsule_New.
        Ok(unsafe { Bound::from_owned_ptr(py, capsule) })
    }
}

// The DLPack ABI (dlpack.h, version 0.8 layout, the unversioned capsule every consumer reads).
const DL_CPU: i32 = 1;
const DLTENSOR: &CStr = c"dltensor";

#[repr(C)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

/// What a DLPack tensor keeps alive: the memory and its shape and strides (elements).
struct DlpackContext {
    /// Held, not read: the memory lives until the consumer calls the deleter.
    _storage: Arc<Storage>,
    shape: Vec<i64>,
    strides: Vec<i64>,
}

/// DLPack's deleter: frees the tensor and releases its hold on the memory (any thread, no
/// GIL needed: the context holds only Rust values).
unsafe extern "C" fn delete_managed(managed: *mut DLManagedTensor) {
    if managed.is_null() {
        return;
    }
    // SAFETY: `managed` and its context came from Box::into_raw in `__dlpack__` and are
    // freed exactly once, here.
    unsafe {
        let managed = Box::from_raw(managed);
        drop(Box::from_raw(managed.manager_ctx as *mut DlpackContext));
    }
}

/// The capsule's destructor: a capsule still named `dltensor` was never consumed, so its
/// tensor is freed here; a consumed one (`used_dltensor`) belongs to its consumer.
unsafe extern "C" fn capsule_destructor(capsule: *mut ffi::PyObject) {
    // SAFETY: called by Python with the capsule being destroyed.
    unsafe {
        if ffi::PyCapsule_IsValid(capsule, DLTENSOR.as_ptr()) == 1 {
            let managed = ffi::PyCapsule_GetPointer(capsule, DLTENSOR.as_ptr()) as *mut DLManagedTensor;
            delete_managed(managed);
        }
    }
}
