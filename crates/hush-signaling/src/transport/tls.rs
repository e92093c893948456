//! TLS to the relay (feature `tls`): rustls on the ring provider, certificates checked against
//! the Mozilla roots or roots the app gives (a self-signed relay certificate can be pinned),
//! and the RFC 9266 `tls-exporter` channel binding the relay authentication is bound to.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use super::relay::{with_timeout, ClientChannel, RelayClient, RelayClientConfig};
use crate::device::{DeviceSigner, TLS_EXPORTER_LABEL, TLS_EXPORTER_LEN};
use crate::Error;

/// Which certificates the relay's TLS certificate is verified against.
#[derive(Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TlsRoots {
    /// The Mozilla root programme's CAs (compiled in, `webpki-roots`).
    #[default]
    WebPki,
    /// Only these certificates (DER), as trust anchors. A self-signed relay certificate can be
    /// pinned this way.
    Custom(Vec<Vec<u8>>),
}

impl std::fmt::Debug for TlsRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::WebPki => f.write_str("WebPki"),
            Self::Custom(c) => write!(f, "Custom({} certificates)", c.len()),
        }
    }
}

/// How to reach a relay over TLS.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RelayTls {
    /// The name the relay's certificate must be valid for (a DNS name or an IP address).
    pub server_name: String,
    /// The trust anchors.
    pub roots: TlsRoots,
}

impl RelayTls {
    /// TLS to `server_name`, verified against `roots`.
    pub fn new(server_name: impl Into<String>, roots: TlsRoots) -> Self {
        Self {
            server_name: server_name.into(),
            roots,
        }
    }

    /// The rustls client configuration: ring provider, TLS 1.2 and 1.3, and (RFC 9266 §3) the
    /// extended master secret required on TLS 1.2, without which an exporter is not a
    /// channel binding.
    fn client_config(&self) -> Result<Arc<ClientConfig>, Error> {
        let mut store = RootCertStore::empty();
        match &self.roots {
            TlsRoots::WebPki => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            TlsRoots::Custom(certs) => {
                for der in certs {
                    if let Err(e) = store.add(CertificateDer::from(der.clone())) {
                        tracing::warn!(error = %e, "TLS root certificate ignored");
                    }
                }
            }
        }
        if store.is_empty() {
            return Err(Error::ApiMisuse("no usable TLS root certificate"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(Error::Tls)?
            .with_root_certificates(store)
            .with_no_client_auth();
        config.require_ems = true;
        Ok(Arc::new(config))
    }

    /// Connects TCP to `addr` and runs the TLS handshake; returns the stream and its exporter.
    async fn connect(
        &self,
        addr: SocketAddr,
    ) -> Result<
        (
            tokio_rustls::client::TlsStream<TcpStream>,
            [u8; TLS_EXPORTER_LEN],
        ),
        Error,
    > {
        let name = ServerName::try_from(self.server_name.clone())
            .map_err(|_| Error::ApiMisuse("TLS server name is not a DNS name or IP address"))?;
        let connector = TlsConnector::from(self.client_config()?);
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let tls = connector.connect(name, tcp).await?;
        let exporter = tls_exporter(tls.get_ref().1)?;
        Ok((tls, exporter))
    }
}

/// The RFC 9266 `tls-exporter` channel binding of a TLS connection (client or server side):
/// 32 bytes exported with label `"EXPORTER-Channel-Binding"` and no context. Both ends of one
/// TLS connection get the same value; two connections (a man in the middle has two) get
/// different ones.
pub fn tls_exporter<D>(
    conn: &rustls::ConnectionCommon<D>,
) -> Result<[u8; TLS_EXPORTER_LEN], Error> {
    conn.export_keying_material([0u8; TLS_EXPORTER_LEN], TLS_EXPORTER_LABEL, None)
        .map_err(Error::Tls)
}

impl RelayClient {
    /// Connects over TLS (framed TCP inside) and authenticates, bound to this TLS connection
    /// ([`ClientChannel::Tls`]). The production way to reach a relay: the relay's
    /// certificate authenticates it, and a device's answer forwarded onto another connection
    /// does not verify there.
    pub async fn connect_tls(
        addr: SocketAddr,
        tls: &RelayTls,
        signer: &dyn DeviceSigner,
        config: RelayClientConfig,
    ) -> Result<Self, Error> {
        let timeout = config.handshake_timeout;
        with_timeout(timeout, async {
            let (stream, exporter) = tls.connect(addr).await?;
            let channel = ClientChannel::Tls { exporter };
            Self::connect_stream_bound(stream, channel, signer, config).await
        })
        .await
    }

    /// Connects over WebSocket inside TLS (`wss://server_name/`) and authenticates, bound to
    /// this TLS connection.
    pub async fn connect_wss(
        addr: SocketAddr,
        tls: &RelayTls,
        signer: &dyn DeviceSigner,
        config: RelayClientConfig,
    ) -> Result<Self, Error> {
        let timeout = config.handshake_timeout;
        with_timeout(timeout, async {
            let (stream, exporter) = tls.connect(addr).await?;
            let channel = ClientChannel::Tls { exporter };
            let host = match tls.server_name.parse::<std::net::Ipv6Addr>() {
                Ok(v6) => format!("[{v6}]"),
                Err(_) => tls.server_name.clone(),
            };
            let url = format!("wss://{host}/");
            Self::connect_ws_stream_bound(stream, &url, channel, signer, config).await
        })
        .await
    }
}
