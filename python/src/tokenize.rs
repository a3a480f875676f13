//! `ferroclip.tokenize`: open_clip's `tokenize` (the same ids: SOT, BPE, EOT, zero padding,
//! truncation keeping EOT last), as an int64 `Array` of shape `(len(texts), context_length)`.
use std::sync::OnceLock;

use dataloader::Tokenizer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::array::Array;

/// The tokenizer, built once (its BPE tables take a moment).
pub fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(Tokenizer::new)
}

/// Token ids of `texts` (a string or a list of strings), one row of `context_length` each.
#[pyfunction]
#[pyo3(signature = (texts, context_length=77))]
pub fn tokenize(py: Python<'_>, texts: Bound<'_, PyAny>, context_length: usize) -> PyResult<Array> {
    if context_length < 2 {
        return Err(PyValueError::new_err(
            "context_length: must be at least 2 (start and end of text)",
        ));
    }
    let texts: Vec<String> = match texts.extract::<String>() {
        Ok(one) => vec![one],
        Err(_) => texts
            .extract()
            .map_err(|_| PyValueError::new_err("texts: expected a str or a list of str"))?,
    };
    let ids = py.detach(|| tokenizer().tokenize_batch(&texts, context_length));
    Ok(Array::from_i64(ids, &[texts.len(), context_length]))
}
