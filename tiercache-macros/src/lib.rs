//! `#[cached]`: the attribute that caches an `async fn`'s results in a `tiercache::Cache`.
//!
//! Use it through `tiercache` with its `macros` feature (`tiercache::cached`); the expansion
//! names only `::tiercache::...` paths, so that is the one dependency a user needs. The syntax
//! and what the macro generates are documented on [`cached`].
//!
//! # Layout
//! - `options`: parsing the options inside `#[cached(...)]`, and their errors.
//! - `template`: the `"{image}:{tag}"` key and tag templates.
//! - `expand`: checks the function against the options and writes the new body.
//!
//! The runtime half (hashing the arguments, returning a caller's own error) is
//! `tiercache::__private`, in `tiercache/src/macro_support.rs`.

use proc_macro::TokenStream;

mod expand;
mod options;
mod template;

/// Caches an `async fn`'s results in a `tiercache::Cache`: calls with equal arguments run the
/// body once (concurrent ones share one run) and then get the stored value until its TTL or an
/// invalidation, from the in-process tier or Redis.
///
/// ```no_run
/// use std::time::Duration;
/// use tiercache::{Cache, Category, cached};
///
/// #[derive(Clone)]
/// struct AppState { cache: Cache }
///
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct Image { name: String, layers: u32 }
///
/// const IMAGES: Category = Category::from_static("images");
///
/// /// Cached under `{env}:{ns}:images:{<name>:<tag>}`, tagged `image:{<name>}`, for 10 minutes.
/// #[cached(
///     cache = state.cache,
///     category = IMAGES,
///     key = "{name}:{tag}",
///     tags = ["image:{name}"],
///     ttl = Duration::from_secs(600),
/// )]
/// async fn image(state: &AppState, name: &str, tag: &str) -> Result<Image, std::io::Error> {
///     Ok(Image { name: format!("{name}:{tag}"), layers: 7 }) // the database query
/// }
///
/// struct Repo { cache: Cache }
///
/// impl Repo {
///     /// Keyed by a hash of `id` (the default key); `self` is never part of the key.
///     #[cached(cache = self.cache)]
///     async fn count(&self, id: u64) -> u64 {
///         id * 2
///     }
/// }
/// ```
///
/// # Options
/// | option | meaning | default |
/// |---|---|---|
/// | `cache = <expr>` | the cache: an expression over the arguments, or a static, such that `let c: &tiercache::Cache = &(<expr>);` compiles (`state.cache`, `self.cache`, `cache` for an argument `cache: &Cache`, `CACHE` for a `static CACHE: LazyLock<Cache>`); an argument it reads a field of (`state`) stays in the default key unless skipped | required |
/// | `category = <expr>` | a `tiercache::Category`: picks the TTL set with the builder's `ttl(category, ..)` and groups the stats | `Category::from_static("<name>")` |
/// | `ttl = <expr>` | a `std::time::Duration` for this fn's entries (`Key::with_ttl`), instead of the category's | the category's TTL |
/// | `tags = [..]` | tags of every entry, so that `Cache::invalidate_tag` reaches them: each a template `"kind:part:.."` (`"insights"`, `"image:{name}"`), built with `Tag::new(kind, [parts])`, or an expression of type `tiercache::Tag` | none |
/// | `key = "<template>"` | the key's parts (see below) | a hash of the arguments |
/// | `skip(a, b)` | arguments left out of the default key (not allowed with `key`) | none |
/// | `name = "<name>"` | the fn's name in keys and in the default category, and alone the default key's scope (so the key survives moving the fn to another module) | the fn's name |
/// | `result` | the return type is a `Result` even though its name is not `Result` (an alias) | from the name |
///
/// # Templates
/// `key` and the tags' templates are split on `:` into parts; each part is fixed text and
/// `{arg}`, `{arg.field}` or `{self.field}` interpolations, turned into text with `ToString`
/// (`{{` and `}}` are literal braces). `key = "{image}:{tag}"` with `image = "nginx"` and
/// `tag = "1.27"` is `cache.key(&category, ["nginx", "1.27"])`, that is
/// `{env}:{namespace}:{category}:{nginx:1.27}`, so that code elsewhere can build the same key to
/// invalidate it. Interpolated text is untrusted input to the key builder: it is escaped there, so
/// a value holding `:` or `*` cannot add a part or widen a pattern. A tag template's kind (the
/// text before the first `:`) is fixed text. Naming something that is not an argument is a
/// compile error. A template key holds only what it names: two fns with the same category and
/// template share entries, so give each its own category (the default) or fixed text in the
/// template.
///
/// # The default key
/// Without `key`, the entry is `cache.key(&category, [name, hash])`: `hash` is 32 hex digits of
/// the SHA-256 of the postcard encoding of the fn's scope (`module_path!()::name`, or `name`
/// alone when given), the type names of `Self` (methods with a receiver) and of the type
/// parameters, and a tuple of the arguments in order, except the receiver, the argument that
/// `cache = <arg>` names, and those in `skip(..)`. Each of those arguments must be
/// `serde::Serialize` (a compile error says so, and what to do, otherwise). The same values give
/// the same key in every process and build; the key changes when the fn is renamed or moved
/// (without `name`), or when the arguments change in number, order or serialized form: then the
/// cache is cold, never wrong. A `HashMap` argument serializes in a per-process order: use a
/// `BTreeMap`, `skip` it, or give a `key`. Arguments whose `Serialize` fails at run time make that
/// call run uncached, with a rate-limited warning. The hash is documented in
/// `tiercache/src/macro_support.rs`.
///
/// # Return values and errors
/// The fn keeps its signature, visibility, generics, attributes and docs. A fn returning `T`
/// goes through `Cache::get_with`; one returning `Result<T, E>` (any path whose last segment is
/// `Result`, such as `io::Result<T>`, or any type with the `result` flag) through
/// `Cache::try_get_with`, and only `Ok` values are cached. `T` must be
/// `Serialize + DeserializeOwned + Clone + Send + Sync + 'static`, as for `get_with`; `E` needs
/// nothing, and each call gets its own `E` by value: a call whose load failed returns that error,
/// and a call that waited on another call's failed load runs its own body, uncached. An
/// `Option<T>` return caches `None` as well.
///
/// # Errors at compile time
/// A fn that is not `async`, a missing `cache`, an unknown or repeated option, a template naming
/// no argument, a `skip` of no argument, and a default-key argument that is not `Serialize` are
/// compile errors that say what to write instead.
///
/// # Limits
/// The key and the cache handle borrow the arguments while the body runs, so a body that consumes
/// an argument the cache expression borrows from (`cache = state.cache` with a body that moves
/// `state`), or a `&mut self` method with `cache = self.cache`, does not compile: clone the
/// `Cache` into the arguments or use a static. Associated fns without a receiver are scoped like
/// free fns (module and name): two types in one module with same-named cached associated fns need
/// a `name` each.
#[proc_macro_attribute]
pub fn cached(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    match expand::cached(attr.into(), item.clone()) {
        Ok(expanded) => expanded.into(),
        // The fn as written, after the error: its callers still type-check, so the error above
        // is the only one reported.
        Err(e) => {
            let mut out = e.into_compile_error();
            out.extend(item);
            out.into()
        }
    }
}
