//! The seed's SQL, generated from a table's plan: pure string building, no I/O.
//!
//! Every row crosses the link as the text of a SQL row literal, `(1,_binary'a\'b',NULL)`,
//! built on the hub by the server itself and compressed there (`COMPRESS`, zlib) a chunk
//! at a time; the office executes `REPLACE INTO t (cols) VALUES <text>`. The same text,
//! hashed with MD5 on each side, is what verification compares, so "equal hash" means
//! "the office would receive exactly this row". The encodings are exact:
//! - integers, decimals and doubles as the server prints them (a double prints as the
//!   shortest text that reads back to the same value);
//! - floats through DOUBLE (a float prints with six digits only, which loses bits);
//! - BIT, ENUM and SET keys by number; every other value as its stored bytes
//!   (`CAST(col AS BINARY)`) in a `_binary'...'` literal, so no character set conversion
//!   ever touches them; temporal values as text in the session time zone, which is
//!   `+00:00` on both sides.
//!
//! Keys are compared with the column's own collation, in the order of the primary key:
//! key literals are written in the connection character set (utf8mb4), which a column
//! outranks in collation coercibility, and the row-constructor comparison is expanded
//! (`k1 > a OR (k1 = a AND k2 > b)`), which the range optimizer of both server families
//! turns into an index range (MariaDB scans the whole index for `(k1, k2) > (a, b)`).

use serde::{Deserialize, Serialize};

/// How a column's value is written and compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnKind {
    /// Integers (and YEAR): printed as digits.
    Integer,
    /// DECIMAL: printed exactly.
    Decimal,
    /// FLOAT: printed through DOUBLE, since a float prints with six digits only.
    Float,
    /// DOUBLE: printed as the shortest text that reads back to the same value.
    Double,
    /// BIT: as its number.
    Bit,
    /// ENUM and SET: the label as bytes; as a key, by its number (the index order).
    EnumSet,
    /// BINARY, VARBINARY, BLOB: the bytes.
    Binary,
    /// CHAR, VARCHAR, TEXT, JSON: the stored bytes; as a key, in utf8mb4 so the column's
    /// collation decides comparisons.
    Text,
    /// DATE, TIME, DATETIME, TIMESTAMP: text in the session time zone.
    Temporal,
    /// Anything else (spatial types and the like): the stored bytes. Not usable in a key.
    Other,
}

impl ColumnKind {
    /// The kind of an `information_schema.COLUMNS.DATA_TYPE`.
    pub fn from_data_type(data_type: &str) -> ColumnKind {
        match data_type.to_ascii_lowercase().as_str() {
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "year" => {
                ColumnKind::Integer
            }
            "decimal" | "numeric" | "dec" | "fixed" => ColumnKind::Decimal,
            "float" => ColumnKind::Float,
            "double" | "real" | "double precision" => ColumnKind::Double,
            "bit" => ColumnKind::Bit,
            "enum" | "set" => ColumnKind::EnumSet,
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
                ColumnKind::Binary
            }
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "json" => {
                ColumnKind::Text
            }
            "date" | "time" | "datetime" | "timestamp" => ColumnKind::Temporal,
            _ => ColumnKind::Other,
        }
    }

    /// Whether a primary key may use a column of this kind.
    pub fn usable_in_key(self) -> bool {
        self != ColumnKind::Other
    }
}

/// One copied column (generated columns are never copied: the office computes them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    pub kind: ColumnKind,
}

/// A table as the seed copies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablePlan {
    pub schema: String,
    pub name: String,
    /// The copied columns, in table order.
    pub columns: Vec<Column>,
    /// The primary key, as indexes into `columns`, in key order.
    pub key: Vec<usize>,
    /// `SHOW CREATE TABLE` on the hub when the seed was planned.
    pub create_sql: String,
    /// The servers' family: the few expressions that differ are spelled its way (the
    /// same on both sides, so the row text and its hash agree).
    #[serde(default = "mariadb")]
    pub family: crate::dialect::Family,
}

fn mariadb() -> crate::dialect::Family {
    crate::dialect::Family::MariaDb
}

/// The hex digest of `text`, as SQL: MD5 where the server has it (MariaDB; cheapest),
/// SHA-256 on MySQL, whose 9.x moved MD5 out of the server into a component.
fn hex_digest(family: crate::dialect::Family, text: &str) -> String {
    match family {
        crate::dialect::Family::MariaDb => format!("MD5({text})"),
        crate::dialect::Family::MySql => format!("SHA2({text},256)"),
    }
}

/// A primary key value as SQL literals, one per key column (as the hub wrote them).
pub type Key = Vec<String>;

/// A backquoted identifier.
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A quoted string literal (for values the seed itself writes, such as names).
pub fn literal(value: &str) -> String {
    format!(
        "'{}'",
        value
            .replace('\\', "\\\\")
            .replace('\'', "\\'")
            .replace('\0', "\\0")
    )
}

impl TablePlan {
    /// `` `schema`.`table` ``.
    pub fn qualified(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.name))
    }

    /// `schema.table` for people.
    pub fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    fn key_columns(&self) -> impl Iterator<Item = &Column> {
        self.key.iter().map(|i| &self.columns[*i])
    }

    /// The copied columns for an INSERT: `` (`a`,`b`) ``.
    pub fn column_list(&self) -> String {
        let names: Vec<String> = self.columns.iter().map(|c| ident(&c.name)).collect();
        format!("({})", names.join(","))
    }

    /// `` `k1`,`k2` `` (ORDER BY, window functions).
    pub fn key_list(&self) -> String {
        let names: Vec<String> = self.key_columns().map(|c| ident(&c.name)).collect();
        names.join(",")
    }

    /// The expression whose value is the row's SQL literal text.
    pub fn row_text(&self) -> String {
        let parts: Vec<String> = self
            .columns
            .iter()
            .map(|c| value_text(c, self.family))
            .collect();
        format!("CONCAT('(',{},')')", parts.join(",',',"))
    }

    /// One select expression per key column giving its literal (named `k0`, `k1`...: an
    /// unnamed expression's name is its text, which would cross in every answer).
    pub fn key_literals(&self) -> String {
        let parts: Vec<String> = self
            .key_columns()
            .enumerate()
            .map(|(i, c)| format!("{} AS k{i}", key_text(c)))
            .collect();
        parts.join(",")
    }

    /// The row's 64-bit hash (of its literal text), for BIT_XOR.
    fn row_hash(&self) -> String {
        format!(
            "CAST(CONV(LEFT({},16),16,10) AS UNSIGNED)",
            hex_digest(self.family, &self.row_text())
        )
    }

    /// Rows with a key after `lo`.
    pub fn after(&self, lo: &Key) -> String {
        self.lexicographic(lo, ">", ">")
    }

    /// Rows with a key up to and including `hi`.
    pub fn at_most(&self, hi: &Key) -> String {
        self.lexicographic(hi, "<", "<=")
    }

    /// `(k1 OP v1) OR (k1 = v1 AND k2 OP v2) ...`, the last column with `last`.
    fn lexicographic(&self, key: &Key, op: &str, last: &str) -> String {
        let cols: Vec<String> = self.key_columns().map(|c| ident(&c.name)).collect();
        let mut terms = Vec::with_capacity(cols.len());
        for i in 0..cols.len() {
            let mut term: Vec<String> = (0..i).map(|j| format!("{}={}", cols[j], key[j])).collect();
            let o = if i + 1 == cols.len() { last } else { op };
            term.push(format!("{}{o}{}", cols[i], key[i]));
            terms.push(format!("({})", term.join(" AND ")));
        }
        format!("({})", terms.join(" OR "))
    }

    /// Rows with exactly this key.
    pub fn equals(&self, key: &Key) -> String {
        let parts: Vec<String> = self
            .key_columns()
            .zip(key)
            .map(|(c, v)| format!("{}={v}", ident(&c.name)))
            .collect();
        format!("({})", parts.join(" AND "))
    }

    /// The rows in (lo, hi]; `None` is open.
    pub fn range(&self, range: &Range) -> String {
        match (&range.lo, &range.hi) {
            (None, None) => "1".to_owned(),
            (Some(lo), None) => self.after(lo),
            (None, Some(hi)) => self.at_most(hi),
            (Some(lo), Some(hi)) => format!("{} AND {}", self.after(lo), self.at_most(hi)),
        }
    }

    /// The copy's two statements for the next chunk of `range` in table number `table`,
    /// prepared once a connection (the statements are long: most of a request), then
    /// each chunk only names them with its keys and size.
    pub fn chunk_statements(&self, table: usize, range: &Range, limit: u64) -> ChunkStatements {
        let (filter, params) = self.range_params(range);
        let shape = format!(
            "{table}_{}{}",
            u8::from(range.lo.is_some()),
            u8::from(range.hi.is_some())
        );
        let end = format!(
            "SELECT {} FROM {} WHERE {filter} ORDER BY {} LIMIT 1 OFFSET ?",
            self.key_literals(),
            self.qualified(),
            self.key_list()
        );
        let chunk = self.compressed_rows(&format!(
            "WHERE {filter} ORDER BY {} LIMIT ?",
            self.key_list()
        ));
        let (end_name, chunk_name) = (format!("tether_e{shape}"), format!("tether_c{shape}"));
        let prepare = vec![
            format!("PREPARE {end_name} FROM {}", literal(&end)),
            format!("PREPARE {chunk_name} FROM {}", literal(&chunk)),
        ];
        let execute = match self.family {
            crate::dialect::Family::MariaDb => {
                let using = |last: u64| {
                    let mut all = params.clone();
                    all.push(last.to_string());
                    all.join(",")
                };
                format!(
                    "EXECUTE {end_name} USING {}; EXECUTE {chunk_name} USING {}",
                    using(limit.saturating_sub(1)),
                    using(limit)
                )
            }
            // MySQL's EXECUTE takes user variables only.
            crate::dialect::Family::MySql => {
                let mut set: Vec<String> = params
                    .iter()
                    .enumerate()
                    .map(|(i, p)| format!("@tether_p{i} = {p}"))
                    .collect();
                set.push(format!("@tether_end = {}", limit.saturating_sub(1)));
                set.push(format!("@tether_limit = {limit}"));
                let vars: Vec<String> =
                    (0..params.len()).map(|i| format!("@tether_p{i}")).collect();
                let using = |last: &str| {
                    let mut all = vars.clone();
                    all.push(last.to_owned());
                    all.join(",")
                };
                format!(
                    "SET {}; EXECUTE {end_name} USING {}; EXECUTE {chunk_name} USING {}",
                    set.join(", "),
                    using("@tether_end"),
                    using("@tether_limit")
                )
            }
        };
        ChunkStatements {
            names: [end_name, chunk_name],
            prepare,
            execute,
        }
    }

    /// The range's predicate with `?` for every key value, and the values in that order.
    fn range_params(&self, range: &Range) -> (String, Vec<String>) {
        let n = self.key.len();
        let marks: Key = vec!["?".to_owned(); n];
        let shape = Range {
            lo: range.lo.as_ref().map(|_| marks.clone()),
            hi: range.hi.as_ref().map(|_| marks.clone()),
        };
        // `lexicographic` writes, for each column i, the columns before it and then i.
        let mut params = Vec::new();
        for key in [&range.lo, &range.hi].into_iter().flatten() {
            for i in 0..n {
                params.extend(key[..=i].iter().cloned());
            }
        }
        (self.range(&shape), params)
    }

    /// The key of the `limit`-th row of the range (empty when it has fewer rows): the
    /// end of a full chunk.
    pub fn chunk_end_sql(&self, range: &Range, limit: u64) -> String {
        format!(
            "SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT 1 OFFSET {}",
            self.key_literals(),
            self.qualified(),
            self.range(range),
            self.key_list(),
            limit.saturating_sub(1)
        )
    }

    /// The first `limit` rows of the range as one compressed text: (rows, bytes of
    /// values, compressed values); see [`TablePlan::compressed_rows`].
    pub fn chunk_sql(&self, range: &Range, limit: u64) -> String {
        self.compressed_rows(&format!(
            "WHERE {} ORDER BY {} LIMIT {limit}",
            self.range(range),
            self.key_list()
        ))
    }

    /// The rows with these keys as one compressed text, as [`TablePlan::chunk_sql`].
    pub fn rows_by_key_sql(&self, keys: &[Key]) -> String {
        let any: Vec<String> = keys.iter().map(|k| self.equals(k)).collect();
        self.compressed_rows(&format!(
            "WHERE {}",
            if any.is_empty() {
                "0".to_owned()
            } else {
                any.join(" OR ")
            }
        ))
    }

    /// The rows `filter` selects as (rows, total bytes of their values, the values'
    /// literals compressed by the hub): column after column, not row after row, since a
    /// column's values look alike and compress about a tenth better together;
    /// [`rows_from_columns`] turns them back into rows.
    fn compressed_rows(&self, filter: &str) -> String {
        let values: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} AS tether_v{i}", value_text(c, self.family)))
            .collect();
        let keys: Vec<String> = self
            .key_columns()
            .enumerate()
            .map(|(i, c)| format!("{} AS tether_k{i}", ident(&c.name)))
            .collect();
        let order: Vec<String> = (0..self.key.len())
            .map(|i| format!("tether_k{i}"))
            .collect();
        let order = order.join(",");
        let lengths: Vec<String> = (0..self.columns.len())
            .map(|i| format!("LENGTH(tether_v{i})"))
            .collect();
        let columns: Vec<String> = (0..self.columns.len())
            .map(|i| format!("GROUP_CONCAT(tether_v{i} ORDER BY {order} SEPARATOR ',')"))
            .collect();
        format!(
            "SELECT COUNT(*) AS n, IFNULL(SUM({}),0) AS l, COMPRESS(CONCAT_WS(',',{})) AS z FROM (SELECT {}, {} FROM {} {filter}) AS tether_chunk",
            lengths.join("+"),
            columns.join(","),
            values.join(","),
            keys.join(","),
            self.qualified()
        )
    }

    /// `REPLACE INTO t (cols) VALUES ` (the rows' text follows). REPLACE, not INSERT: a
    /// row copied earlier whose unique value has since moved to another row on the hub
    /// is removed to make room, and verification brings it back as the hub has it.
    pub fn replace_prefix(&self) -> String {
        format!(
            "REPLACE INTO {} {} VALUES ",
            self.qualified(),
            self.column_list()
        )
    }

    /// Row count and XOR of row hashes per range, one result row per range that has
    /// rows: (index, count, xor). One scan for all the ranges: the row text appears once
    /// in the statement, whatever the number of ranges (it is most of a statement's size).
    pub fn aggregates_sql(&self, ranges: &[(usize, &Range)]) -> String {
        format!(
            "SELECT tether_i AS i, COUNT(*) AS n, BIT_XOR(tether_h) AS x FROM (SELECT {} AS tether_i, {} AS tether_h FROM {} WHERE {}) AS tether_ranges GROUP BY tether_i",
            self.range_index(ranges),
            self.row_hash(),
            self.qualified(),
            self.any_range(ranges)
        )
    }

    /// Every row's key and hash in these ranges: (index, key literals..., hash).
    pub fn row_hashes_sql(&self, ranges: &[(usize, &Range)]) -> String {
        format!(
            "SELECT {} AS i, {}, LEFT({},16) AS h FROM {} WHERE {}",
            self.range_index(ranges),
            self.key_literals(),
            hex_digest(self.family, &self.row_text()),
            self.qualified(),
            self.any_range(ranges)
        )
    }

    /// `CASE WHEN <range> THEN <index> ... END`: which of the (disjoint) ranges a row is in.
    fn range_index(&self, ranges: &[(usize, &Range)]) -> String {
        let mut out = String::from("CASE");
        for (i, r) in ranges {
            out.push_str(&format!(" WHEN {} THEN {i}", self.range(r)));
        }
        out.push_str(" END");
        out
    }

    /// Rows in any of the ranges.
    fn any_range(&self, ranges: &[(usize, &Range)]) -> String {
        if ranges.is_empty() {
            return "0".into();
        }
        let parts: Vec<String> = ranges
            .iter()
            .map(|(_, r)| format!("({})", self.range(r)))
            .collect();
        parts.join(" OR ")
    }

    /// Keys splitting each range into pieces of `step` rows: (index, row number, key
    /// literals...); sort by the first two (a UNION has no order of its own).
    pub fn split_keys_sql(&self, ranges: &[(usize, &Range, u64)]) -> String {
        let parts: Vec<String> = ranges
            .iter()
            .map(|(i, r, step)| {
                format!(
                    "SELECT {i} AS i, tether_rn AS r, {} FROM (SELECT {}, ROW_NUMBER() OVER (ORDER BY {}) AS tether_rn FROM {} WHERE {}) AS tether_split WHERE MOD(tether_rn, {}) = 0",
                    self.key_literals(),
                    self.key_list(),
                    self.key_list(),
                    self.qualified(),
                    self.range(r),
                    (*step).max(1)
                )
            })
            .collect();
        parts.join(" UNION ALL ")
    }

    /// Deletes the rows with these keys (on the office).
    pub fn delete_keys_sql(&self, keys: &[Key]) -> String {
        let any: Vec<String> = keys.iter().map(|k| self.equals(k)).collect();
        format!(
            "DELETE FROM {} WHERE {}",
            self.qualified(),
            any.join(" OR ")
        )
    }

    /// Deletes every row of the range (on the office).
    pub fn delete_range_sql(&self, range: &Range) -> String {
        format!(
            "DELETE FROM {} WHERE {}",
            self.qualified(),
            self.range(range)
        )
    }
}

/// The copy's statements for one chunk: PREPARE them first on a connection that has not
/// yet (their `names`), then `execute` (the end key's answer, then the chunk's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkStatements {
    pub names: [String; 2],
    pub prepare: Vec<String>,
    pub execute: String,
}

/// A key range (lo, hi]; `None` is open on that side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub lo: Option<Key>,
    pub hi: Option<Key>,
}

impl Range {
    pub const ALL: Range = Range { lo: None, hi: None };

    /// The pieces of this range cut at `keys` (ascending, each inside the range).
    pub fn split_at(&self, keys: &[Key]) -> Vec<Range> {
        let mut out = Vec::with_capacity(keys.len() + 1);
        let mut lo = self.lo.clone();
        for k in keys {
            out.push(Range {
                lo: lo.clone(),
                hi: Some(k.clone()),
            });
            lo = Some(k.clone());
        }
        out.push(Range {
            lo,
            hi: self.hi.clone(),
        });
        out
    }
}

/// Turns `rows` x `columns` SQL literals written column after column (comma-separated,
/// as [`TablePlan::chunk_sql`] sends them) into rows' text, `(a,b),(c,d)`. Quoted literals
/// may hold any byte, commas and escaped quotes included.
pub fn rows_from_columns(text: &[u8], rows: usize, columns: usize) -> Result<Vec<u8>, String> {
    let want = rows * columns;
    let mut spans = Vec::with_capacity(want);
    let mut at = 0;
    while at < text.len() {
        let start = at;
        if text[at] == b'\'' {
            at += 1;
            loop {
                match text.get(at) {
                    Some(b'\\') => at += 2,
                    Some(b'\'') => {
                        at += 1;
                        break;
                    }
                    Some(_) => at += 1,
                    None => return Err("a chunk ends inside a quoted value".into()),
                }
            }
        } else {
            while at < text.len() && text[at] != b',' {
                at += 1;
            }
        }
        if at > text.len() {
            return Err("a chunk ends inside an escape".into());
        }
        spans.push((start, at));
        match text.get(at) {
            None => break,
            Some(b',') if at + 1 < text.len() => at += 1,
            Some(_) => return Err(format!("a chunk has something unexpected at byte {at}")),
        }
    }
    if spans.len() != want {
        return Err(format!(
            "a chunk of {rows} rows x {columns} columns holds {} values",
            spans.len()
        ));
    }
    let mut out = Vec::with_capacity(text.len() + rows * 3);
    for r in 0..rows {
        if r > 0 {
            out.push(b',');
        }
        out.push(b'(');
        for c in 0..columns {
            if c > 0 {
                out.push(b',');
            }
            let (a, b) = spans[c * rows + r];
            out.extend_from_slice(&text[a..b]);
        }
        out.push(b')');
    }
    Ok(out)
}

/// The literal text of one value (never NULL: NULL is the word NULL).
fn value_text(c: &Column, family: crate::dialect::Family) -> String {
    let n = ident(&c.name);
    match c.kind {
        ColumnKind::Integer | ColumnKind::Decimal | ColumnKind::Double => {
            format!("IFNULL({n},'NULL')")
        }
        // The server's six digits when they read back to the same float, else nine
        // significant ones, else the double's seventeen: exact, and short where it can be.
        ColumnKind::Float => {
            let nine = format!("ROUND(CAST({n} AS DOUBLE),8-FLOOR(LOG10(ABS({n}))))");
            format!(
                "IF({n} IS NULL,'NULL',IF(CAST(CONCAT({n}) AS FLOAT)={n},CONCAT({n}),IFNULL(IF(CAST({nine} AS FLOAT)={n},CONCAT({nine}),NULL),CAST({n} AS DOUBLE))))"
            )
        }
        ColumnKind::Bit => format!("IFNULL({n}+0,'NULL')"),
        // MySQL's QUOTE() gives its result in the connection's character set and refuses
        // bytes that are not valid there: bytes cross as hex literals, the rest as utf8mb4
        // text, which the office reads as such.
        ColumnKind::Binary if family == crate::dialect::Family::MySql => {
            format!("IFNULL(CONCAT('X''',HEX({n}),''''),'NULL')")
        }
        ColumnKind::EnumSet
        | ColumnKind::Binary
        | ColumnKind::Text
        | ColumnKind::Temporal
        | ColumnKind::Other
            if family == crate::dialect::Family::MySql =>
        {
            format!("QUOTE({n})")
        }
        // QUOTE gives NULL as the word NULL. The office reads these with `SET NAMES
        // binary`: the bytes go into the column as they are, whatever its character set.
        ColumnKind::EnumSet
        | ColumnKind::Binary
        | ColumnKind::Text
        | ColumnKind::Temporal
        | ColumnKind::Other => format!("QUOTE(CAST({n} AS BINARY))"),
    }
}

/// The literal text of a key value, compared in the column's own collation and order.
fn key_text(c: &Column) -> String {
    let n = ident(&c.name);
    match c.kind {
        ColumnKind::Integer | ColumnKind::Decimal | ColumnKind::Double => {
            format!("CAST({n} AS CHAR)")
        }
        ColumnKind::Float => format!("CAST(CAST({n} AS DOUBLE) AS CHAR)"),
        ColumnKind::Bit | ColumnKind::EnumSet => format!("CAST({n}+0 AS CHAR)"),
        ColumnKind::Binary => format!("CONCAT('X''',HEX({n}),'''')"),
        ColumnKind::Text => format!("QUOTE(CONVERT({n} USING utf8mb4))"),
        ColumnKind::Temporal | ColumnKind::Other => format!("QUOTE({n})"),
    }
}

/// Whether `information_schema.COLUMNS.EXTRA` says the server computes the column
/// (`VIRTUAL GENERATED`, `STORED GENERATED`): such columns are not copied, the office
/// computes them. MySQL also says `DEFAULT_GENERATED` of a column whose default is an
/// expression (`DEFAULT CURRENT_TIMESTAMP`): that one holds stored values and is copied.
pub fn is_generated(extra: &str) -> bool {
    extra
        .split_whitespace()
        .any(|word| word.eq_ignore_ascii_case("GENERATED"))
}

/// The columns of a `SHOW CREATE TABLE` text that hold stored values (every column but
/// those `GENERATED ALWAYS AS`), read from the definition itself: what a copy and its
/// check must cover, whatever `information_schema` said when the seed was planned.
pub fn stored_columns(create_sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in create_sql.lines() {
        let Some(rest) = line.strip_prefix("  `") else {
            continue;
        };
        // The name ends at the first backquote that is not doubled.
        let mut name = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '`' {
                if chars.peek() == Some(&'`') {
                    chars.next();
                } else {
                    break;
                }
            }
            name.push(c);
        }
        let definition: String = chars.collect();
        if !definition
            .to_ascii_uppercase()
            .contains(" GENERATED ALWAYS AS ")
        {
            out.push(name);
        }
    }
    out
}

/// The stored columns of `create_sql` that `columns` leaves out: each one would be
/// neither copied nor compared, so its values would silently differ.
pub fn uncovered_columns(create_sql: &str, columns: &[Column]) -> Vec<String> {
    stored_columns(create_sql)
        .into_iter()
        .filter(|name| !columns.iter().any(|c| &c.name == name))
        .collect()
}

/// `SHOW CREATE TABLE` text without what changes as rows arrive (`AUTO_INCREMENT=n`), to
/// tell whether the hub's table definition changed during the seed.
pub fn comparable_definition(create_sql: &str) -> String {
    let mut out = String::with_capacity(create_sql.len());
    let mut rest = create_sql;
    while let Some(at) = rest.find(" AUTO_INCREMENT=") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + " AUTO_INCREMENT=".len()..];
        let digits = tail.chars().take_while(char::is_ascii_digit).count();
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mysql_rows_cross_as_text_and_hex_and_are_hashed_with_sha2() {
        let mut p = plan();
        p.family = crate::dialect::Family::MySql;
        let row = p.row_text();
        assert!(!row.contains("AS BINARY"), "{row}");
        assert!(
            row.contains("IFNULL(CONCAT('X''',HEX(`body`),''''),'NULL')"),
            "{row}"
        );
        assert!(row.contains("QUOTE(`sku`)"), "{row}");
        let a = Range::ALL;
        assert!(p.row_hashes_sql(&[(0, &a)]).contains("SHA2(CONCAT('('"));
        assert!(!p.row_hashes_sql(&[(0, &a)]).contains("MD5("));
    }

    fn plan() -> TablePlan {
        TablePlan {
            family: crate::dialect::Family::MariaDb,
            schema: "app".into(),
            name: "order`lines".into(),
            columns: vec![
                Column {
                    name: "order_id".into(),
                    kind: ColumnKind::Integer,
                },
                Column {
                    name: "sku".into(),
                    kind: ColumnKind::Text,
                },
                Column {
                    name: "weight".into(),
                    kind: ColumnKind::Float,
                },
                Column {
                    name: "body".into(),
                    kind: ColumnKind::Binary,
                },
            ],
            key: vec![0, 1],
            create_sql: String::new(),
        }
    }

    fn key(a: &str, b: &str) -> Key {
        vec![a.to_owned(), b.to_owned()]
    }

    #[test]
    fn identifiers_are_quoted_and_escaped() {
        assert_eq!(plan().qualified(), "`app`.`order``lines`");
        assert_eq!(literal("a'b\\c"), "'a\\'b\\\\c'");
    }

    #[test]
    fn composite_keys_compare_lexicographically_with_the_last_column_inclusive_at_the_top() {
        let p = plan();
        assert_eq!(
            p.after(&key("5", "'x'")),
            "((`order_id`>5) OR (`order_id`=5 AND `sku`>'x'))"
        );
        assert_eq!(
            p.at_most(&key("9", "'y'")),
            "((`order_id`<9) OR (`order_id`=9 AND `sku`<='y'))"
        );
        assert_eq!(p.range(&Range::ALL), "1");
        assert_eq!(p.equals(&key("5", "'x'")), "(`order_id`=5 AND `sku`='x')");
    }

    #[test]
    fn values_are_written_exactly_and_keys_in_collation_order() {
        let p = plan();
        let row = p.row_text();
        assert!(
            row.starts_with("CONCAT('(',IFNULL(`order_id`,'NULL'),',',"),
            "{row}"
        );
        assert!(
            row.contains("CAST(CONCAT(`weight`) AS FLOAT)=`weight`"),
            "floats exact: {row}"
        );
        assert!(row.contains("QUOTE(CAST(`body` AS BINARY))"), "{row}");
        let keys = p.key_literals();
        assert!(
            keys.contains("QUOTE(CONVERT(`sku` USING utf8mb4))"),
            "{keys}"
        );
    }

    #[test]
    fn a_range_splits_at_its_keys() {
        let r = Range {
            lo: Some(key("1", "'a'")),
            hi: None,
        };
        let parts = r.split_at(&[key("3", "'b'"), key("7", "'c'")]);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].lo, r.lo);
        assert_eq!(parts[0].hi, Some(key("3", "'b'")));
        assert_eq!(parts[2].lo, Some(key("7", "'c'")));
        assert_eq!(parts[2].hi, None);
        assert_eq!(Range::ALL.split_at(&[]), vec![Range::ALL]);
    }

    #[test]
    fn chunk_queries_read_in_key_order_and_compress_on_the_hub() {
        let p = plan();
        let sql = p.chunk_sql(&Range::ALL, 500);
        assert!(
            sql.contains("COMPRESS(CONCAT_WS(',',GROUP_CONCAT(tether_v0 ORDER BY tether_k0,tether_k1 SEPARATOR ','),"),
            "{sql}"
        );
        assert!(sql.contains("ORDER BY `order_id`,`sku` LIMIT 500"), "{sql}");
        let end = p.chunk_end_sql(&Range::ALL, 500);
        assert!(end.ends_with("LIMIT 1 OFFSET 499"), "{end}");
        assert!(
            p.replace_prefix().starts_with(
                "REPLACE INTO `app`.`order``lines` (`order_id`,`sku`,`weight`,`body`)"
            )
        );
    }

    #[test]
    fn a_chunk_names_its_prepared_statements_with_its_keys_in_placeholder_order() {
        let p = plan();
        let range = Range {
            lo: Some(key("5", "'x'")),
            hi: Some(key("9", "'y'")),
        };
        let c = p.chunk_statements(2, &range, 300);
        assert_eq!(
            c.names,
            ["tether_e2_11".to_owned(), "tether_c2_11".to_owned()]
        );
        assert!(
            c.prepare[0].starts_with("PREPARE tether_e2_11 FROM 'SELECT "),
            "{:?}",
            c.prepare
        );
        assert!(
            c.prepare[0].contains("((`order_id`>?) OR (`order_id`=? AND `sku`>?)) AND ((`order_id`<?) OR (`order_id`=? AND `sku`<=?))"),
            "{:?}",
            c.prepare
        );
        assert!(c.prepare[1].contains("LIMIT ?"), "{:?}", c.prepare);
        assert!(
            c.prepare[1].contains("\\'NULL\\'"),
            "quoted inside: {:?}",
            c.prepare
        );
        assert_eq!(
            c.execute,
            "EXECUTE tether_e2_11 USING 5,5,'x',9,9,'y',299; EXECUTE tether_c2_11 USING 5,5,'x',9,9,'y',300"
        );
        let open = p.chunk_statements(2, &Range::ALL, 10);
        assert_eq!(open.names[1], "tether_c2_00");
        assert_eq!(
            open.execute,
            "EXECUTE tether_e2_00 USING 9; EXECUTE tether_c2_00 USING 10"
        );
    }

    #[test]
    fn ranges_are_compared_in_one_scan() {
        let p = plan();
        let (a, b) = (
            Range {
                lo: None,
                hi: Some(key("5", "'x'")),
            },
            Range {
                lo: Some(key("5", "'x'")),
                hi: None,
            },
        );
        let sql = p.aggregates_sql(&[(3, &a), (4, &b)]);
        assert_eq!(sql.matches("MD5(").count(), 1, "{sql}");
        assert!(
            sql.contains("CASE WHEN ((`order_id`<5) OR (`order_id`=5 AND `sku`<='x')) THEN 3 WHEN"),
            "{sql}"
        );
        assert!(sql.ends_with("GROUP BY tether_i"), "{sql}");
        let rows = p.row_hashes_sql(&[(3, &a)]);
        assert!(rows.contains("LEFT(MD5("), "{rows}");
        assert!(rows.contains("WHERE (((`order_id`<5)"), "{rows}");
    }

    #[test]
    fn columns_become_rows_again_whatever_the_quoted_bytes_hold() {
        let text = b"1,2,3,'a,b','it\\'s','x\\\\',NULL,'\xff,\x00',-1.5e-7";
        let rows = rows_from_columns(text, 3, 3).unwrap();
        assert_eq!(
            rows,
            b"(1,'a,b',NULL),(2,'it\\'s','\xff,\x00'),(3,'x\\\\',-1.5e-7)".to_vec()
        );
        assert_eq!(rows_from_columns(b"", 0, 4).unwrap(), Vec::<u8>::new());
        assert!(rows_from_columns(b"1,2", 3, 1).is_err(), "too few values");
        assert!(
            rows_from_columns(b"1,'ab", 2, 1).is_err(),
            "cut inside a quote"
        );
        assert!(
            rows_from_columns(b"'a'b", 1, 1).is_err(),
            "garbage after a quote"
        );
        assert!(rows_from_columns(b"1,", 1, 1).is_err(), "a trailing comma");
        assert!(
            rows_from_columns(b"'a\\", 1, 1).is_err(),
            "cut inside an escape"
        );
    }

    #[test]
    fn kinds_from_information_schema() {
        assert_eq!(ColumnKind::from_data_type("BIGINT"), ColumnKind::Integer);
        assert_eq!(ColumnKind::from_data_type("longblob"), ColumnKind::Binary);
        assert_eq!(ColumnKind::from_data_type("json"), ColumnKind::Text);
        assert_eq!(
            ColumnKind::from_data_type("timestamp"),
            ColumnKind::Temporal
        );
        assert_eq!(ColumnKind::from_data_type("point"), ColumnKind::Other);
        assert!(!ColumnKind::Other.usable_in_key());
    }

    #[test]
    fn only_computed_columns_count_as_generated() {
        assert!(is_generated("VIRTUAL GENERATED"));
        assert!(is_generated("STORED GENERATED"));
        // MySQL's words for a default that is an expression: a stored value.
        assert!(!is_generated("DEFAULT_GENERATED"));
        assert!(!is_generated(
            "DEFAULT_GENERATED on update CURRENT_TIMESTAMP"
        ));
        assert!(!is_generated("auto_increment"));
        assert!(!is_generated(""));
    }

    #[test]
    fn the_stored_columns_are_read_from_the_definition() {
        let mysql = "CREATE TABLE `t` (\n  `id` int NOT NULL,\n  `created` timestamp(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),\n  `we``ird` int DEFAULT NULL,\n  `total` int GENERATED ALWAYS AS ((`id` + 1)) VIRTUAL,\n  PRIMARY KEY (`id`),\n  KEY `created` (`created`)\n) ENGINE=InnoDB";
        assert_eq!(stored_columns(mysql), vec!["id", "created", "we`ird"]);
        let mariadb = "CREATE TABLE `t` (\n  `id` int(11) NOT NULL,\n  `total` int(11) GENERATED ALWAYS AS (`id` + 1) STORED,\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB";
        assert_eq!(stored_columns(mariadb), vec!["id"]);
        let id = Column {
            name: "id".into(),
            kind: ColumnKind::Integer,
        };
        assert_eq!(
            uncovered_columns(mysql, std::slice::from_ref(&id)),
            vec!["created", "we`ird"]
        );
        assert!(uncovered_columns(mariadb, &[id]).is_empty());
    }

    #[test]
    fn definitions_compare_without_the_auto_increment_counter() {
        let a = "CREATE TABLE `t` (\n  `id` int(11) NOT NULL AUTO_INCREMENT,\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB AUTO_INCREMENT=1201 DEFAULT CHARSET=utf8mb4";
        let b = a.replace("AUTO_INCREMENT=1201", "AUTO_INCREMENT=99");
        assert_eq!(comparable_definition(a), comparable_definition(&b));
        assert!(comparable_definition(a).contains("NOT NULL AUTO_INCREMENT,"));
        assert_ne!(
            comparable_definition(a),
            comparable_definition(&a.replace("int(11)", "bigint(20)"))
        );
    }
}
