//! Reading an object as a stream of chunks, for objects too large to hold
//! whole (a projection of millions of features reads its artifact so).

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::ObjectStoreExt;

use crate::{ReadOnly, Result, StoreError, ZoneMarker};

impl<Z: ZoneMarker> ReadOnly<Z> {
    /// The object's size and its bytes as chunks. `NotFound` if absent.
    /// Nothing here checks a digest: the caller hashes the chunks it was
    /// given and refuses what it built from them if the digest differs.
    pub async fn get_stream(&self, key: &str) -> Result<(u64, BoxStream<'static, Result<Bytes>>)> {
        let p = self.io.path(key)?;
        let r = self
            .io
            .os()
            .get(&p)
            .await
            .map_err(self.io.err("get", key))?;
        let size = r.meta.size;
        let (zone, key) = (self.io.zone, key.to_owned());
        let chunks = r
            .into_stream()
            .map(move |c| c.map_err(|e| StoreError::backend("get", zone, &key, e)));
        Ok((size, chunks.boxed()))
    }
}
