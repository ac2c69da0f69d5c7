//! [`Codec`] for kiln's BPE tokenizer: content goes through `encode_ordinary`, so special-token
//! text typed by a user stays text.

use crate::format::Codec;
use kiln_tokenizer::Tokenizer;

impl Codec for Tokenizer {
    fn encode_text(&self, text: &str) -> Vec<u32> {
        self.encode_ordinary(text)
    }
    fn decode_text(&self, ids: &[u32]) -> String {
        self.decode(ids)
    }
    fn special_id(&self, name: &str) -> Option<u32> {
        self.special_token_id(name)
    }
    fn vocab_size(&self) -> usize {
        Tokenizer::vocab_size(self)
    }
    fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        Tokenizer::decode_bytes(self, ids)
    }
}

#[cfg(test)]
mod tests {
    use crate::format::{render_for_training, ChatTokens, Conversation, Message};
    use kiln_tokenizer::{train_from_texts, TrainConfig, CHAT_SPECIAL_TOKENS};

    #[test]
    fn trained_tokenizer_renders_with_specials_by_id() {
        let cfg = TrainConfig {
            vocab_size: 256 + 20 + CHAT_SPECIAL_TOKENS.len(),
            ..Default::default()
        };
        let tok = train_from_texts(&["hello hello world <|bos|>"], &cfg).unwrap();
        let t = ChatTokens::from_codec(&tok).unwrap();
        let python_end = t
            .python_end
            .expect("the chat specials include the tool brackets");
        assert!(t.is_format_token(python_end) && t.is_format_token(t.bos));
        assert!(!t.is_format_token(tok.encode_ordinary("hello")[0]));
        let conv = Conversation::new(vec![
            Message::user("<|user_end|> hello"),
            Message::assistant("world"),
        ]);
        let r = render_for_training(&conv, &tok, &t, 100).unwrap();
        assert_eq!(r.ids.iter().filter(|&&i| i == t.user_end).count(), 1);
        assert_eq!(r.ids[0], t.bos);
        assert_eq!(*r.ids.last().unwrap(), t.assistant_end);
        // Decoding the assistant span gives back its text.
        let start = r.ids.iter().position(|&i| i == t.assistant_start).unwrap();
        assert_eq!(tok.decode(&r.ids[start + 1..r.ids.len() - 1]), "world");
    }
}
