//! The size of a typed payload as compact JSON, counted without writing it
//! and without looking inside strings (escapes are not counted): what
//! quotas count. Nothing is allocated and content (base64, mostly) is never
//! scanned byte by byte.

use serde::Serialize;
use serde::ser::{self, Impossible};

/// The compact JSON size of `value`, escapes not counted.
pub fn json_len<T: Serialize + ?Sized>(value: &T) -> usize {
    let mut counter = Counter(0);
    // Counting cannot fail: every method returns Ok.
    let _ = value.serialize(&mut counter);
    counter.0
}

struct Counter(usize);

/// Never raised: the counter accepts every value.
#[derive(Debug)]
struct Never;

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unreachable")
    }
}

impl std::error::Error for Never {}

impl ser::Error for Never {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        Never
    }
}

fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

fn signed_digits(n: i64) -> usize {
    usize::from(n < 0) + digits(n.unsigned_abs())
}

/// An array or object being counted: how many items so far.
struct Compound<'a> {
    counter: &'a mut Counter,
    items: usize,
}

impl Compound<'_> {
    fn item(&mut self) {
        if self.items > 0 {
            self.counter.0 += 1; // the comma
        }
        self.items += 1;
    }
}

impl<'a> ser::Serializer for &'a mut Counter {
    type Ok = ();
    type Error = Never;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Impossible<(), Never>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Impossible<(), Never>;

    fn serialize_bool(self, v: bool) -> Result<(), Never> {
        self.0 += if v { 4 } else { 5 };
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Never> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), Never> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), Never> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), Never> {
        self.0 += signed_digits(v);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), Never> {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), Never> {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), Never> {
        self.serialize_u64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), Never> {
        self.0 += digits(v);
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), Never> {
        self.serialize_f64(v.into())
    }
    fn serialize_f64(self, v: f64) -> Result<(), Never> {
        self.0 += v.to_string().len();
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), Never> {
        self.0 += v.len_utf8() + 2;
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), Never> {
        self.0 += v.len() + 2;
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Never> {
        v.serialize(self)
    }
    fn serialize_none(self) -> Result<(), Never> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), Never> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Never> {
        self.0 += 4; // null
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Never> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, v: &'static str) -> Result<(), Never> {
        self.serialize_str(v)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), Never> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<(), Never> {
        // {"variant":value}
        self.0 += variant.len() + 5;
        v.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Compound<'a>, Never> {
        self.0 += 2;
        Ok(Compound {
            counter: self,
            items: 0,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<Compound<'a>, Never> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Compound<'a>, Never> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Never> {
        Err(Never) // no SOCP payload has one
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Compound<'a>, Never> {
        self.serialize_seq(None)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Compound<'a>, Never> {
        self.serialize_seq(None)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Never> {
        Err(Never) // no SOCP payload has one
    }
}

impl ser::SerializeSeq for Compound<'_> {
    type Ok = ();
    type Error = Never;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Never> {
        self.item();
        v.serialize(&mut *self.counter)
    }
    fn end(self) -> Result<(), Never> {
        Ok(())
    }
}

impl ser::SerializeTuple for Compound<'_> {
    type Ok = ();
    type Error = Never;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Never> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<(), Never> {
        Ok(())
    }
}

impl ser::SerializeTupleStruct for Compound<'_> {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Never> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<(), Never> {
        Ok(())
    }
}

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = Never;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), Never> {
        self.item();
        self.counter.0 += 1; // the colon
        k.serialize(&mut *self.counter)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), Never> {
        v.serialize(&mut *self.counter)
    }
    fn end(self) -> Result<(), Never> {
        Ok(())
    }
}

impl ser::SerializeStruct for Compound<'_> {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), Never> {
        self.item();
        self.counter.0 += key.len() + 3;
        v.serialize(&mut *self.counter)
    }
    fn end(self) -> Result<(), Never> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::messages::Message;
    use serde_json::{Value, json};

    #[test]
    fn the_counted_size_is_the_compact_json_size() {
        let v = json!({
            "a": "xyz", "n": 12345, "neg": -7, "zero": 0, "t": true, "f": false, "z": null,
            "list": [1, "two", [], {}], "obj": {"k": {"deep": [true]}}, "e": {}
        });
        assert_eq!(json_len(&v), serde_json::to_string(&v).unwrap().len());
        let Value::Object(m) = json!({
            "group_id": "group_g", "creator": "alice", "creator_pub": "k", "content_sig": "s",
            "shares": [{"member": "bob", "wrapped_group_key": "w", "x": [1]}],
            "msg_id": "m", "zz": {"u": u64::MAX}
        }) else {
            unreachable!()
        };
        let share = Message::from_payload("GROUP_KEY_SHARE", m).unwrap();
        let Message::GroupKeyShare(share) = share else {
            unreachable!()
        };
        assert_eq!(
            json_len(&share),
            serde_json::to_string(&share).unwrap().len()
        );
    }
}
