//! Tidy checks over the agent's own source (in the style of rust-analyzer's tidy tests):
//! everything whose name says it holds a secret (a password, a token, credentials, a
//! private key) is held as a `Secret`, whose Debug and Display print `***`, until the one
//! line that hands it to a library. A new field, parameter or binding that holds one as a
//! plain `String` fails here, named by file and line.

use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// The last word (of a `snake_case` name) that says a value is a secret.
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "secrets",
    "token",
    "credentials",
    "authorization",
];
/// The same for two-word endings.
const SECRET_PAIRS: &[[&str; 2]] = &[["private", "key"], ["secret", "key"]];

/// Types that hold a secret safely, or that only share a word with one.
const SAFE_TYPES: &[&str] = &[
    "Secret",
    // Shutdown signals, not credentials.
    "CancellationToken",
];

/// Names that hold a secret in another type on purpose: (file under agent/src, name, why).
const ALLOWED: &[(&str, &str, &str)] = &[
    (
        "hubkit.rs",
        "password",
        "the SQL texts the hub's admin runs: writing the password into them is their purpose",
    ),
    (
        "fuzz.rs",
        "CONFIG_SECRETS",
        "the fuzz target's own sample passwords, which it checks never show in errors",
    ),
];

fn is_secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let words: Vec<&str> = lower.split('_').filter(|w| !w.is_empty()).collect();
    let Some(last) = words.last() else {
        return false;
    };
    SECRET_WORDS.contains(last)
        || (words.len() >= 2 && SECRET_PAIRS.contains(&[words[words.len() - 2], last]))
}

fn is_safe_type(ty: &syn::Type) -> bool {
    let text = quote_type(ty);
    text.split(|c: char| !c.is_alphanumeric() && c != '_')
        .any(|word| SAFE_TYPES.contains(&word))
}

/// `T` of `Option<T>`.
fn option_inner(ty: &syn::Type) -> Option<&syn::Type> {
    let syn::Type::Path(p) = ty else {
        return None;
    };
    let last = p.path.segments.last()?;
    if last.ident != "Option" {
        return None;
    }
    match &last.arguments {
        syn::PathArguments::AngleBracketed(a) => a.args.iter().find_map(|arg| match arg {
            syn::GenericArgument::Type(t) => Some(t),
            _ => None,
        }),
        _ => None,
    }
}

fn quote_type(ty: &syn::Type) -> String {
    use quote::ToTokens;
    ty.to_token_stream().to_string()
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("test")
            || (a.path().is_ident("cfg")
                && a.parse_args::<syn::Meta>()
                    .is_ok_and(|m| m.path().is_ident("test")))
    })
}

/// A secret-named place that is not a `Secret`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Finding {
    file: String,
    line: usize,
    name: String,
    what: String,
}

struct Scan<'a> {
    file: &'a str,
    found: Vec<Finding>,
}

impl Scan<'_> {
    fn report(&mut self, name: &str, span: proc_macro2::Span, what: String) {
        if ALLOWED
            .iter()
            .any(|(file, allowed, _)| *file == self.file && *allowed == name)
        {
            return;
        }
        self.found.push(Finding {
            file: self.file.to_owned(),
            line: span.start().line,
            name: name.to_owned(),
            what,
        });
    }

    fn typed(&mut self, name: &syn::Ident, ty: &syn::Type, kind: &str) {
        let name_text = name.to_string();
        if is_secret_name(&name_text) && !is_safe_type(ty) {
            self.report(
                &name_text,
                name.span(),
                format!("{kind} `{name_text}` is `{}`", quote_type(ty)),
            );
        }
    }

    /// Every secret-named binding in a pattern: with its type when the pattern says it.
    fn pattern(&mut self, pat: &syn::Pat, ty: Option<&syn::Type>, kind: &str) {
        match pat {
            syn::Pat::Type(t) => self.pattern(&t.pat, Some(&t.ty), kind),
            syn::Pat::Ident(i) => {
                let name = i.ident.to_string();
                match ty {
                    Some(ty) => self.typed(&i.ident, ty, kind),
                    None if is_secret_name(&name) => self.report(
                        &name,
                        i.ident.span(),
                        format!("{kind} `{name}` has no written type (write `: Secret`)"),
                    ),
                    None => {}
                }
                if let Some((_, sub)) = &i.subpat {
                    self.pattern(sub, None, kind);
                }
            }
            // Inside a destructuring the parts' types are not written: each secret-named
            // part needs the whole pattern's type written (`let (a, pw): (A, Secret)`).
            syn::Pat::Tuple(t) => {
                let types = match ty {
                    Some(syn::Type::Tuple(tt)) if tt.elems.len() == t.elems.len() => {
                        tt.elems.iter().map(Some).collect()
                    }
                    _ => vec![None; t.elems.len()],
                };
                for (p, ty) in t.elems.iter().zip(types) {
                    self.pattern(p, ty, kind);
                }
            }
            syn::Pat::TupleStruct(t) => {
                // `let Some(x): Option<T>` gives `x` the type `T`.
                let inner = (t.path.is_ident("Some") && t.elems.len() == 1)
                    .then(|| ty.and_then(option_inner))
                    .flatten();
                for p in &t.elems {
                    self.pattern(p, inner, kind);
                }
            }
            syn::Pat::Struct(s) => {
                for f in &s.fields {
                    self.pattern(&f.pat, None, kind);
                }
            }
            syn::Pat::Reference(r) => self.pattern(&r.pat, ty, kind),
            syn::Pat::Slice(s) => {
                for p in &s.elems {
                    self.pattern(p, None, kind);
                }
            }
            syn::Pat::Or(o) => {
                for p in &o.cases {
                    self.pattern(p, ty, kind);
                }
            }
            _ => {}
        }
    }
}

impl<'ast> Visit<'ast> for Scan<'_> {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !is_cfg_test(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !is_cfg_test(&f.attrs) {
            syn::visit::visit_item_fn(self, f);
        }
    }

    fn visit_field(&mut self, f: &'ast syn::Field) {
        if let Some(name) = &f.ident {
            self.typed(name, &f.ty, "field");
        }
        syn::visit::visit_field(self, f);
    }

    fn visit_fn_arg(&mut self, arg: &'ast syn::FnArg) {
        if let syn::FnArg::Typed(t) = arg {
            self.pattern(&t.pat, Some(&t.ty), "parameter");
        }
        syn::visit::visit_fn_arg(self, arg);
    }

    fn visit_expr_closure(&mut self, c: &'ast syn::ExprClosure) {
        for input in &c.inputs {
            self.pattern(input, None, "closure parameter");
        }
        syn::visit::visit_expr_closure(self, c);
    }

    fn visit_local(&mut self, l: &'ast syn::Local) {
        // A closure is a function, not a value: its parameters are checked on their own.
        let closure = l
            .init
            .as_ref()
            .is_some_and(|i| matches!(*i.expr, syn::Expr::Closure(_)));
        if !closure {
            self.pattern(&l.pat, None, "binding");
        }
        syn::visit::visit_local(self, l);
    }

    fn visit_item_const(&mut self, c: &'ast syn::ItemConst) {
        self.typed(&c.ident, &c.ty, "constant");
        syn::visit::visit_item_const(self, c);
    }

    fn visit_item_static(&mut self, s: &'ast syn::ItemStatic) {
        self.typed(&s.ident, &s.ty, "static");
        syn::visit::visit_item_static(self, s);
    }
}

fn scan(file: &str, text: &str) -> Vec<Finding> {
    let parsed = syn::parse_file(text).unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut s = Scan {
        file,
        found: Vec::new(),
    };
    s.visit_file(&parsed);
    s.found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_secret_in_the_agent_is_a_secret() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(files.len() > 20, "found only {files:?}");
    let mut found = Vec::new();
    for path in &files {
        let rel = path
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        found.extend(scan(&rel, &std::fs::read_to_string(path).unwrap()));
    }
    let listed: Vec<String> = found
        .iter()
        .map(|f| format!("agent/src/{}:{}: {}", f.file, f.line, f.what))
        .collect();
    assert!(
        found.is_empty(),
        "secrets held outside `secret::Secret` (make them `Secret` and call `expose()` where \
         a library takes the value; or add to ALLOWED with the reason):\n{}",
        listed.join("\n")
    );
    // Every allow-list entry still names something, so the list stays short and true.
    for (file, name, _) in ALLOWED {
        let text = std::fs::read_to_string(src.join(file)).unwrap();
        assert!(text.contains(name), "ALLOWED names {name} in {file}, gone");
    }
}

#[test]
fn the_scan_finds_what_it_should() {
    let text = r#"
        struct Settings {
            password: Option<String>,
            mqtt_password: Option<Secret>,
            password_ok: bool,
            key_path: PathBuf,
            device_private_key: Vec<u8>,
            shutdown_token: CancellationToken,
        }
        enum Event { Login { credentials: String } }
        const API_TOKEN: &str = "x";
        fn login(user: &str, passwd: &str, hash: &PasswordHash) {
            let secret = read();
            let typed: Secret = read();
            let pw_secret: Secret = read();
            let (name, token) = split();
            let (name2, authorization): (String, Secret) = split();
            let check = |password: &str| password.len();
            let is_token = |s: &str| s.is_empty();
            let Some((u, password)) = creds() else { return };
            let Some((u, password)): Option<(String, Secret)> = creds() else { return };
        }
        #[cfg(test)]
        mod tests { fn t() { let password = "in a test"; } }
    "#;
    let found: Vec<String> = scan("x.rs", text)
        .into_iter()
        .map(|f| format!("{}:{}", f.line, f.name))
        .collect();
    assert_eq!(
        found,
        [
            "3:password",
            "7:device_private_key",
            "10:credentials",
            "11:API_TOKEN",
            "12:passwd",
            "13:secret",
            "16:token",
            "18:password",
            "20:password",
        ]
    );
}

/// The places secrets pass through, printed with `{:?}` and `{:#?}` (as a log line or a
/// panic would): none of the distinctive values shows.
#[cfg(feature = "web")]
#[test]
fn debug_of_everything_holding_a_secret_masks_it() {
    use base64::Engine;
    const VALUES: [&str; 4] = [
        "Office-Pw-1a7f",
        "Hub-Pw-2b8e",
        "Mqtt-Pw-3c9d",
        "Web-Pw-4d0e",
    ];
    let text = format!(
        "[site]\nid = \"office\"\n[hub]\nhost = \"hub.example.com\"\n\
         [office_db]\npassword = \"{}\"\n[hub_db]\npassword = \"{}\"\n\
         [mqtt]\nusername = \"box\"\npassword = \"{}\"\n",
        VALUES[0], VALUES[1], VALUES[2]
    );
    let config = tether::config::Config::parse(&text, "tether.toml").unwrap();
    let mqtt = tether::app::mqtt_settings(&config);
    assert_eq!(
        mqtt.password.as_ref().map(|p| p.expose()),
        Some(VALUES[2]),
        "the broker still gets the password"
    );
    let header = base64::engine::general_purpose::STANDARD.encode(format!("office:{}", VALUES[3]));
    let request = format!("GET / HTTP/1.1\r\nHost: box\r\nAuthorization: Basic {header}\r\n\r\n");
    let parsed = tether::web::parse(request.as_bytes());
    let tether::web::Parsed::Done(req) = &parsed else {
        panic!("{parsed:?}");
    };
    let credentials = tether::passwd::basic_credentials(req.authorization.as_ref().unwrap());
    assert_eq!(
        credentials.as_ref().map(|(u, p)| (u.as_str(), p.expose())),
        Some(("office", VALUES[3]))
    );
    for shown in [
        format!("{config:?}"),
        format!("{config:#?}"),
        format!("{mqtt:?}"),
        format!("{mqtt:#?}"),
        format!("{parsed:?}"),
        format!("{parsed:#?}"),
        format!("{credentials:?}"),
    ] {
        for secret in VALUES.iter().chain([&header.as_str()]) {
            assert!(!shown.contains(secret), "{secret} shown in {shown}");
        }
        assert!(shown.contains("***"), "{shown}");
    }
}
