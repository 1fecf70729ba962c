//! The export format: a manifest (the tenant's record, migration versions, tables with
//! row counts and checksums, sequence positions) and one `COPY` block per table, as
//! one file that [`Snapshot::parse`] reads back and [`Snapshot::to_bytes`] writes.
//!
//! The format names no schema and carries no `tenant_id` column: a snapshot of a row
//! tenant loads into a schema tenant and back, under the same or another id.

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::naming::quote_ident;
use crate::tenant::{Strategy, TenantId, TenantLimits};

/// The `format` of a tenantry export.
pub(crate) const FORMAT: &str = "tenantry-export";
/// Its version.
pub(crate) const VERSION: u32 = 1;
/// The line that carries the manifest.
const MANIFEST_PREFIX: &str = "-- tenantry-manifest: ";

/// What an export says about the tenant it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedTenant {
    /// Its id.
    pub id: TenantId,
    /// Its display name.
    pub name: String,
    /// Its strategy.
    pub strategy: Strategy,
    /// Its limits.
    #[serde(default)]
    pub limits: TenantLimits,
}

/// A tenant migration the exported tenant had applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedMigration {
    /// The version.
    pub version: i64,
    /// Its checksum, hex.
    pub checksum: String,
}

/// One table of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableData {
    /// The table's name (no schema).
    pub name: String,
    /// Its columns in the data, `tenant_id` and generated columns left out.
    pub columns: Vec<String>,
    /// How many rows.
    pub rows: i64,
    /// An order-independent checksum of the rows (the sum of a 64-bit hash of each
    /// row's text, `hashtextextended`), compared after loading.
    pub checksum: String,
}

/// The position of a sequence that feeds a column (`serial`, identity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequencePosition {
    /// The table.
    pub table: String,
    /// The column.
    pub column: String,
    /// `last_value` of the sequence.
    pub last_value: i64,
    /// `is_called` of the sequence.
    pub is_called: bool,
}

/// What an export holds, apart from the rows themselves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `tenantry-export`.
    pub format: String,
    /// The format's version.
    pub version: u32,
    /// The tenant it came from.
    pub tenant: ExportedTenant,
    /// The tenant migrations it had (none for a row tenant).
    pub migrations: Vec<ExportedMigration>,
    /// Its tables, in an order that loads referenced tables first.
    pub tables: Vec<TableData>,
    /// Its sequences' positions.
    pub sequences: Vec<SequencePosition>,
}

/// A tenant's data: the manifest and each table's rows as `COPY` text.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub manifest: Manifest,
    /// `COPY` text per table, in the manifest's order.
    pub data: Vec<Vec<u8>>,
    /// Read from this registry's own places (not from a file someone handed in).
    pub trusted: bool,
}

impl Snapshot {
    /// The export file: comment lines for people, the manifest, then one `COPY` block
    /// per table.
    pub fn to_bytes(&self, header: &str) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        for line in header.lines() {
            out.extend_from_slice(format!("-- {line}\n").as_bytes());
        }
        let manifest = serde_json::to_string(&self.manifest)
            .map_err(|e| Error::Internal(format!("cannot write the manifest: {e}")))?;
        out.extend_from_slice(format!("{MANIFEST_PREFIX}{manifest}\n\n").as_bytes());
        for (table, data) in self.manifest.tables.iter().zip(&self.data) {
            let columns = table
                .columns
                .iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", ");
            out.extend_from_slice(
                format!(
                    "COPY {} ({columns}) FROM stdin;\n",
                    quote_ident(&table.name)
                )
                .as_bytes(),
            );
            out.extend_from_slice(data);
            out.extend_from_slice(b"\\.\n\n");
        }
        Ok(out)
    }

    /// Reads an export file; anything that is not one is a 422 saying what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let bad = |why: &str| Error::Unprocessable(format!("not a tenantry export: {why}"));
        let mut rest = bytes;
        let manifest: Manifest = loop {
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or_else(|| bad("no manifest line (`-- tenantry-manifest: {..}`)"))?;
            let line = std::str::from_utf8(&rest[..end]).map_err(|_| bad("not UTF-8 text"))?;
            rest = &rest[end + 1..];
            if let Some(json) = line.strip_prefix(MANIFEST_PREFIX) {
                break serde_json::from_str(json)
                    .map_err(|e| bad(&format!("unreadable manifest: {e}")))?;
            }
            if !line.starts_with("--") {
                return Err(bad("no manifest line (`-- tenantry-manifest: {..}`)"));
            }
        };
        if manifest.format != FORMAT {
            return Err(bad(&format!("format `{}`", manifest.format.escape_debug())));
        }
        if manifest.version != VERSION {
            return Err(Error::Unprocessable(format!(
                "this export has format version {}; this tenantry reads version {VERSION}",
                manifest.version
            )));
        }
        let mut data = Vec::with_capacity(manifest.tables.len());
        for table in &manifest.tables {
            while rest.first() == Some(&b'\n') {
                rest = &rest[1..];
            }
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or_else(|| bad(&format!("no data for table `{}`", table.name)))?;
            if !rest.starts_with(b"COPY ") || !rest[..end].ends_with(b" FROM stdin;") {
                return Err(bad(&format!(
                    "expected the COPY line of table `{}`",
                    table.name.escape_debug()
                )));
            }
            rest = &rest[end + 1..];
            // COPY text escapes every backslash of a value: `\.` alone on a line ends
            // the block.
            let stop = if rest.starts_with(b"\\.\n") {
                0
            } else {
                find(rest, b"\n\\.\n")
                    .map(|i| i + 1)
                    .ok_or_else(|| bad(&format!("the data of `{}` has no end", table.name)))?
            };
            data.push(rest[..stop].to_vec());
            rest = &rest[stop + 3..];
        }
        Ok(Self {
            manifest,
            data,
            trusted: false,
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a checksum written by [`hex`].
pub(crate) fn unhex(text: &str) -> Result<Vec<u8>, Error> {
    let bad = || {
        Error::Unprocessable(format!(
            "the export holds a checksum that is not hex: `{}`",
            text.escape_debug()
        ))
    };
    if !text.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            manifest: Manifest {
                format: FORMAT.to_owned(),
                version: VERSION,
                tenant: ExportedTenant {
                    id: "acme".parse().unwrap(),
                    name: "Acme".to_owned(),
                    strategy: Strategy::Schema,
                    limits: TenantLimits::default(),
                },
                migrations: vec![],
                tables: vec![
                    TableData {
                        name: "empty".to_owned(),
                        columns: vec!["id".to_owned()],
                        rows: 0,
                        checksum: "0".to_owned(),
                    },
                    TableData {
                        name: "notes".to_owned(),
                        columns: vec!["id".to_owned(), "body".to_owned()],
                        rows: 2,
                        checksum: "1".to_owned(),
                    },
                ],
                sequences: vec![],
            },
            data: vec![Vec::new(), b"1\ta \\\\.\n2\t\\\\.\n".to_vec()],
            trusted: false,
        }
    }

    #[test]
    fn an_export_reads_back_as_written() {
        let s = snapshot();
        let bytes = s.to_bytes("tenantry export of `acme`").unwrap();
        let back = Snapshot::parse(&bytes).unwrap();
        assert_eq!(back.manifest, s.manifest);
        assert_eq!(back.data, s.data);
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        for (input, needle) in [
            (&b"CREATE TABLE x ();\n"[..], "no manifest"),
            (
                b"-- tenantry-manifest: {\"format\": 1}\n",
                "unreadable manifest",
            ),
            (b"", "no manifest"),
        ] {
            let e = Snapshot::parse(input).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        let mut bytes = snapshot().to_bytes("x").unwrap();
        bytes.truncate(bytes.len() - 6);
        let e = Snapshot::parse(&bytes).unwrap_err().to_string();
        assert!(e.contains("has no end"), "{e}");
    }
}
