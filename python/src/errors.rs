//! Rust errors as Python exceptions: `ferroclip.DataError` and `ferroclip.CurateError`, both
//! `ValueError`s, carrying the Rust message (which names the field, shard or file).
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::PyErr;

create_exception!(
    ferroclip,
    DataError,
    PyValueError,
    "A shard, spec or loader setting that cannot work; the message names it."
);
create_exception!(
    ferroclip,
    CurateError,
    PyValueError,
    "A curation config, metadata file or input that cannot work; the message names it."
);

/// A loader error as `ferroclip.DataError`.
pub fn data_error(e: dataloader::DataError) -> PyErr {
    DataError::new_err(e.to_string())
}

/// A curation error as `ferroclip.CurateError`.
pub fn curate_error(e: curator::CurateError) -> PyErr {
    CurateError::new_err(e.to_string())
}
