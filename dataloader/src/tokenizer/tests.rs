//! Tests of the tokenizer: ids, padding and truncation, cleaning and decoding as open_clip.
use super::*;

fn tokenizer() -> Tokenizer {
    Tokenizer::new()
}

#[test]
fn known_ids_from_open_clip() {
    let tok = tokenizer();
    assert_eq!(
        tok.tokenize_unpadded("a photo of a cat", 77),
        vec![49406, 320, 1125, 539, 320, 2368, 49407]
    );
    assert_eq!(tok.tokenize_unpadded("", 77), vec![49406, 49407]);
    assert_eq!(tok.encode("a photo of a cat"), vec![320, 1125, 539, 320, 2368]);
}

#[test]
fn tokenize_pads_and_truncates_like_open_clip() {
    let tok = tokenizer();
    let row = tok.tokenize("a photo of a cat", 10);
    assert_eq!(row, vec![49406, 320, 1125, 539, 320, 2368, 49407, 0, 0, 0]);
    let cut = tok.tokenize("a photo of a cat", 4);
    assert_eq!(cut, vec![49406, 320, 1125, 49407]);
    assert_eq!(tok.tokenize("cat", 1), vec![49407]);
    assert!(tok.tokenize("cat", 0).is_empty());
    let long = "a ".repeat(200);
    let row = tok.tokenize(&long, 77);
    assert_eq!(row.len(), 77);
    assert_eq!(row[76], Tokenizer::EOT as i64);
    assert!(row[1..76].iter().all(|&id| id == 320));
}

#[test]
fn batch_is_rows_of_tokenize() {
    let tok = tokenizer();
    let batch = tok.tokenize_batch(&["a cat", "a dog"], 8);
    assert_eq!(batch.len(), 16);
    assert_eq!(&batch[..8], tok.tokenize("a cat", 8).as_slice());
    assert_eq!(&batch[8..], tok.tokenize("a dog", 8).as_slice());
}

#[test]
fn cleaning_collapses_space_lowercases_and_unescapes() {
    let tok = tokenizer();
    assert_eq!(tok.clean("  A\tPhoto \n OF\u{a0}a CAT  "), "a photo of a cat");
    assert_eq!(tok.clean("Fish &amp; Chips"), "fish & chips");
    assert_eq!(tok.clean("&amp;amp;amp;"), "&");
    assert_eq!(tok.clean("P&EACUTE;REZ"), "pérez");
    assert_eq!(tok.clean("&copy 2024"), "© 2024");
    assert_eq!(tok.clean("\u{201c}here\u{2019}s\u{201d} ﬁne"), "\"here's\" fine");
    assert_eq!(tok.clean("ＬＯＵＤ　ＮＯＩＳＥＳ"), "loud noises");
    assert_eq!(tok.clean("e\u{301}"), "é");
    assert_eq!(tok.clean("\u{1b}[31mred\u{1b}[0m\u{0}"), "red");
}

#[test]
fn contractions_and_special_tokens_split_as_open_clip() {
    let tok = tokenizer();
    assert_eq!(tok.encode("it's"), [tok.encode("it"), tok.encode("'s")].concat());
    assert_eq!(tok.encode("<start_of_text>"), vec![Tokenizer::SOT]);
    assert_eq!(tok.encode("x<end_of_text>"), vec![tok.encode("x")[0], Tokenizer::EOT]);
}

#[test]
fn decode_inverts_encode_on_clean_text() {
    let tok = tokenizer();
    let ids: Vec<i64> = tok.encode("a photo of a café 🐱").into_iter().map(i64::from).collect();
    assert_eq!(tok.decode(&ids).as_deref(), Ok("a photo of a café 🐱 "));
    assert_eq!(
        tok.decode(&[49408]),
        Err(TokenizerError::UnknownId {
            id: 49408,
            vocab_size: 49408
        })
    );
    assert!(tok.decode(&[-1]).is_err());
}

#[test]
fn vocabulary_has_open_clip_shape() {
    let tok = tokenizer();
    assert_eq!(tok.inner.decoder.len(), Tokenizer::VOCAB_SIZE);
    assert_eq!(tok.inner.decoder[Tokenizer::SOT as usize], "<start_of_text>");
    assert_eq!(tok.inner.decoder[Tokenizer::EOT as usize], "<end_of_text>");
    assert_eq!(tok.inner.merges.len(), MERGE_COUNT);
    assert_eq!(tok.inner.cleaner.html5.len(), 2231);
}

#[test]
fn shared_across_threads_gives_same_ids() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    let tok = tokenizer();
    let expected = tok.encode("many threads tokenizing the same caption");
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let tok = tok.clone();
            std::thread::spawn(move || tok.encode("many threads tokenizing the same caption"))
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().ok(), Some(expected.clone()));
    }
}
