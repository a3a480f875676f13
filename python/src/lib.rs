//! `ferroclip._native`: the Rust half of the `ferroclip` Python package (see
//! python/ferroclip/__init__.py for the Python face): the loader ([`loader`]), zero-copy
//! arrays ([`array`]), the tokenizer ([`tokenize`]) and curation ([`curate`]). It links the
//! `dataloader` and `curator` crates only, never libtorch.
use pyo3::prelude::*;

mod array;
mod curate;
mod errors;
mod loader;
mod tokenize;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<array::Array>()?;
    m.add_class::<loader::Loader>()?;
    m.add_class::<loader::Batch>()?;
    m.add("DataError", py.get_type::<errors::DataError>())?;
    m.add("CurateError", py.get_type::<errors::CurateError>())?;
    m.add_function(wrap_pyfunction!(tokenize::tokenize, m)?)?;
    m.add_function(wrap_pyfunction!(curate::match_entries, m)?)?;
    m.add_function(wrap_pyfunction!(curate::align_text_filter, m)?)?;
    m.add_function(wrap_pyfunction!(curate::curate_samples, m)?)?;
    m.add_function(wrap_pyfunction!(curate::curate_shards, m)?)?;
    m.add("CLIP_MEAN", dataloader::CLIP_MEAN.to_vec())?;
    m.add("CLIP_STD", dataloader::CLIP_STD.to_vec())?;
    Ok(())
}
