//! End-to-end content (PROTOCOL.md A5): what a sending client seals and
//! signs, and what a receiving client opens and verifies. Nodes never call
//! this: they cannot read what they carry.

use serde_json::{Map, Value, json};

use crate::crypto::{CryptoError, PrivateKey, PublicKey, aead};
use crate::wire::b64;
use crate::wire::canonical;
use crate::wire::messages::{FileChunk, FileMode, GroupKeyShare, MsgGroup, MsgPrivate, Share};

/// Plaintext bytes per file chunk.
pub const CHUNK_SIZE: usize = 61440;
/// Part B: the `FILE_END` of a file sent to one user carries `"mode": "dm"`,
/// asking its recipient's node for `RECEIPT`s (queued, delivered) about it,
/// as for a DM. A reference peer ignores the field.
pub const FILE_END_MODE: &str = "mode";

/// True if a `FILE_END`'s fields ask for receipts (see [`FILE_END_MODE`]).
pub fn file_end_wants_receipts(extra: &Map<String, Value>) -> bool {
    extra.get(FILE_END_MODE).and_then(Value::as_str) == Some("dm")
}

/// Why content could not be opened or verified.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("field {0} is not valid base64url")]
    Encoding(&'static str),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("content has no canonical form: {0}")]
    Canonical(#[from] canonical::CanonicalError),
}

fn decode(field: &'static str, text: &str) -> Result<Vec<u8>, ContentError> {
    b64::decode(text).map_err(|_| ContentError::Encoding(field))
}

/// The `msg_id` of content whose sender (a reference client) set none: the
/// SHA-256 of its canonical payload. Nodes and clients derive it the same
/// way, here, so a client's duplicate check and a node's custody agree.
pub fn derived_msg_id(payload: &serde_json::Map<String, Value>) -> String {
    let bytes = canonical::map_to_string(payload).unwrap_or_default();
    format!(
        "sha256:{}",
        crate::crypto::hex(&crate::crypto::sha256(bytes.as_bytes()))
    )
}

/// What a DM's `content_sig` covers: `{ciphertext, iv, tag, from, to, ts}`.
pub fn dm_signed_bytes(p: &MsgPrivate, from: &str, to: &str) -> Result<Vec<u8>, ContentError> {
    let fields = json!({
        "ciphertext": p.ciphertext, "iv": p.iv, "tag": p.tag,
        "from": from, "to": to, "ts": p.content_ts,
    });
    Ok(canonical::to_vec(&fields)?)
}

/// What a group key share's `content_sig` covers.
pub fn share_signed_bytes(p: &GroupKeyShare) -> Result<Vec<u8>, ContentError> {
    let shares: Vec<Value> = p
        .shares
        .iter()
        .map(|s| Value::Object(crate::wire::messages::Message::share_payload(s)))
        .collect();
    let fields = json!({
        "group_id": p.group_id, "shares": shares,
        "creator_pub": p.creator_pub, "creator": p.creator,
    });
    Ok(canonical::to_vec(&fields)?)
}

/// What a group message's `content_sig` covers.
pub fn group_signed_bytes(p: &MsgGroup) -> Result<Vec<u8>, ContentError> {
    let fields = json!({
        "group_id": p.group_id, "ciphertext": p.ciphertext, "iv": p.iv,
        "tag": p.tag, "from": p.from, "ts": p.ts,
    });
    Ok(canonical::to_vec(&fields)?)
}

/// What a file manifest's `content_sig` covers (PROTOCOL.md B).
pub fn manifest_signed_bytes(
    file_id: &str,
    name: &str,
    size: u64,
    sha256: &str,
    mode: FileMode,
    from: &str,
    to: &str,
) -> Result<Vec<u8>, ContentError> {
    let fields = json!({
        "file_id": file_id, "name": name, "size": size, "sha256": sha256,
        "mode": mode, "from": from, "to": to,
    });
    Ok(canonical::to_vec(&fields)?)
}

/// Seals and signs a DM from `from` to `to`.
pub fn seal_dm(
    sender: &PrivateKey,
    from: &str,
    to: &str,
    recipient: &PublicKey,
    plaintext: &[u8],
    content_ts: i64,
) -> Result<MsgPrivate, ContentError> {
    let key = aead::new_key()?;
    let sealed = aead::seal(key.as_ref(), plaintext)?;
    let mut msg = MsgPrivate {
        ciphertext: b64::encode(&sealed.ciphertext),
        iv: b64::encode(sealed.iv),
        tag: b64::encode(sealed.tag),
        wrapped_key: b64::encode(recipient.wrap(key.as_ref())?),
        sender_pub: sender.public().to_b64().to_owned(),
        content_sig: String::new(),
        content_ts,
        msg_id: None,
        extra: Map::new(),
    };
    msg.content_sig = sender.sign_b64(&dm_signed_bytes(&msg, from, to)?)?;
    Ok(msg)
}

/// Opens a DM addressed to `recipient`.
pub fn open_dm(recipient: &PrivateKey, p: &MsgPrivate) -> Result<Vec<u8>, ContentError> {
    let key = recipient.unwrap_key(&decode("wrapped_key", &p.wrapped_key)?)?;
    Ok(aead::open(
        &key,
        &decode("iv", &p.iv)?,
        &decode("ciphertext", &p.ciphertext)?,
        &decode("tag", &p.tag)?,
    )?)
}

/// Creates a new group key and the signed share that gives it to `members`.
pub fn new_group_share(
    creator: &PrivateKey,
    creator_id: &str,
    group_id: &str,
    members: &[(String, PublicKey)],
) -> Result<(Vec<u8>, GroupKeyShare), ContentError> {
    let key = aead::new_key()?;
    let shares = members
        .iter()
        .map(|(member, public)| {
            Ok(Share {
                member: member.clone(),
                wrapped_group_key: b64::encode(public.wrap(key.as_ref())?),
                extra: Map::new(),
            })
        })
        .collect::<Result<Vec<_>, CryptoError>>()?;
    let mut share = GroupKeyShare {
        group_id: group_id.to_owned(),
        shares,
        creator: creator_id.to_owned(),
        creator_pub: creator.public().to_b64().to_owned(),
        content_sig: String::new(),
        msg_id: None,
        extra: Map::new(),
    };
    share.content_sig = creator.sign_b64(&share_signed_bytes(&share)?)?;
    Ok((key.to_vec(), share))
}

/// The group key wrapped for `member` in a share, if there is one.
pub fn open_group_share(
    member_key: &PrivateKey,
    member: &str,
    share: &GroupKeyShare,
) -> Result<Option<Vec<u8>>, ContentError> {
    let Some(mine) = share.shares.iter().find(|s| s.member == member) else {
        return Ok(None);
    };
    let key = member_key.unwrap_key(&decode("wrapped_group_key", &mine.wrapped_group_key)?)?;
    Ok(Some(key.to_vec()))
}

/// Seals and signs a group message.
pub fn seal_group(
    sender: &PrivateKey,
    from: &str,
    group_id: &str,
    group_key: &[u8],
    plaintext: &[u8],
    ts: i64,
) -> Result<MsgGroup, ContentError> {
    let sealed = aead::seal(group_key, plaintext)?;
    let mut msg = MsgGroup {
        group_id: group_id.to_owned(),
        ciphertext: b64::encode(&sealed.ciphertext),
        iv: b64::encode(sealed.iv),
        tag: b64::encode(sealed.tag),
        from: from.to_owned(),
        ts,
        sender_pub: sender.public().to_b64().to_owned(),
        content_sig: String::new(),
        content_ts: ts,
        msg_id: None,
        extra: Map::new(),
    };
    msg.content_sig = sender.sign_b64(&group_signed_bytes(&msg)?)?;
    Ok(msg)
}

/// Opens a group message with the group key.
pub fn open_group(group_key: &[u8], p: &MsgGroup) -> Result<Vec<u8>, ContentError> {
    Ok(aead::open(
        group_key,
        &decode("iv", &p.iv)?,
        &decode("ciphertext", &p.ciphertext)?,
        &decode("tag", &p.tag)?,
    )?)
}

/// Seals one file chunk with `key` (the per-file key in DM mode, the group
/// key in group mode).
pub fn seal_chunk(
    file_id: &str,
    index: u64,
    key: &[u8],
    wrapped_key: Option<&str>,
    plaintext: &[u8],
) -> Result<FileChunk, ContentError> {
    let sealed = aead::seal(key, plaintext)?;
    Ok(FileChunk {
        file_id: file_id.to_owned(),
        index,
        ciphertext: b64::encode(&sealed.ciphertext),
        iv: b64::encode(sealed.iv),
        tag: b64::encode(sealed.tag),
        wrapped_key: wrapped_key.map(str::to_owned),
        user_id: None,
        msg_id: None,
        extra: Map::new(),
    })
}

/// Opens one file chunk with `key`.
pub fn open_chunk(key: &[u8], p: &FileChunk) -> Result<Vec<u8>, ContentError> {
    Ok(aead::open(
        key,
        &decode("iv", &p.iv)?,
        &decode("ciphertext", &p.ciphertext)?,
        &decode("tag", &p.tag)?,
    )?)
}

/// Unwraps a DM file's key from a chunk's `wrapped_key`.
pub fn unwrap_file_key(recipient: &PrivateKey, wrapped: &str) -> Result<Vec<u8>, ContentError> {
    Ok(recipient
        .unwrap_key(&decode("wrapped_key", wrapped)?)?
        .to_vec())
}

/// Verifies a base64url `content_sig` over `signed` with a directory key.
pub fn verify(key: &PublicKey, signed: &[u8], content_sig: &str) -> bool {
    key.verify_b64(signed, content_sig).is_ok()
}
