import type { NetworkAttachment } from './network.js'

/**
 * The proxy environment variables for a guest with mediated egress and an explicit proxy port.
 * Transparent redirection does not depend on them (programs that ignore HTTP_PROXY still go
 * through the proxy); they let programs that honour them use CONNECT instead.
 */
export function egressProxyEnv(att: Pick<NetworkAttachment, 'egress'>): Record<string, string> {
  if (!att.egress.enabled || att.egress.proxy.explicitPort === undefined) return {}
  const url = `http://${att.egress.proxy.address}:${att.egress.proxy.explicitPort}`
  const noProxy = 'localhost,127.0.0.1,::1'
  return { HTTP_PROXY: url, HTTPS_PROXY: url, http_proxy: url, https_proxy: url, NO_PROXY: noProxy, no_proxy: noProxy }
}
