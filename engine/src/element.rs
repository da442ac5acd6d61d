//! The element type of stored vectors: `u8`, `i8` or `f32`.
//!
//! A leaf: file readers ([`crate::data`]), the on-disk header
//! ([`crate::layout`]) and the distance kernels ([`crate::metric`]) all name
//! the type, so it lives below all of them. The trait that gives each type
//! its distances is [`crate::metric::Element`].

/// The element type of a vector file, given by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ElemType {
    U8,
    I8,
    F32,
}

impl ElemType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            ElemType::U8 | ElemType::I8 => 1,
            ElemType::F32 => 4,
        }
    }

    /// The conventional file extension, without the dot.
    pub const fn extension(self) -> &'static str {
        match self {
            ElemType::U8 => "u8bin",
            ElemType::I8 => "i8bin",
            ElemType::F32 => "fbin",
        }
    }

    /// A short name for messages and reports.
    pub const fn name(self) -> &'static str {
        match self {
            ElemType::U8 => "u8",
            ElemType::I8 => "i8",
            ElemType::F32 => "f32",
        }
    }

    /// The type a file extension (without the dot) names: `u8bin` (or
    /// `bbin`), `i8bin`, `fbin`.
    pub fn from_extension(ext: &str) -> Option<Self> {
        match ext {
            "u8bin" | "bbin" => Some(ElemType::U8),
            "i8bin" => Some(ElemType::I8),
            "fbin" => Some(ElemType::F32),
            _ => None,
        }
    }

    /// The byte used for this type in index headers.
    pub const fn code(self) -> u8 {
        match self {
            ElemType::U8 => 0,
            ElemType::I8 => 1,
            ElemType::F32 => 2,
        }
    }

    /// The inverse of [`ElemType::code`].
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(ElemType::U8),
            1 => Some(ElemType::I8),
            2 => Some(ElemType::F32),
            _ => None,
        }
    }
}

impl std::fmt::Display for ElemType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not an element type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown element type {0:?}: expected u8, i8 or f32")]
pub struct UnknownElemType(pub String);

impl std::str::FromStr for ElemType {
    type Err = UnknownElemType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "u8" | "uint8" => Ok(ElemType::U8),
            "i8" | "int8" => Ok(ElemType::I8),
            "f32" | "float32" => Ok(ElemType::F32),
            _ => Err(UnknownElemType(s.to_string())),
        }
    }
}
