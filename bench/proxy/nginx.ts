/**
 * nginx as the C relay doing our proxy's job in one hop: terminate the client's TLS with a
 * certificate for the upstream's name, add `Authorization`, re-encrypt to the upstream with
 * verification over pooled keep-alive connections. Debian's nginx, its own config, pid file,
 * logs and temp paths in the run's directory, one worker, access log off, proxy buffering
 * 4 × 64 KiB. Pure config builder plus a start function; the bench owns the process.
 */
import { join } from 'node:path'

export interface NginxConfig {
  dir: string
  listenPort: number
  upstreamPort: number
  /** The name the client asks for (SNI) and the upstream's certificate carries. */
  upstreamName: string
  certPath: string
  keyPath: string
  upstreamCaPath: string
  secret: string
  workers: number
}

export function nginxConfig(c: NginxConfig): string {
  const p = (f: string) => join(c.dir, f)
  return `# bench:proxy's nginx; written and removed by the bench.
daemon off;
master_process on;
worker_processes ${c.workers};
pid ${p('nginx.pid')};
error_log ${p('nginx-error.log')} warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${p('nginx-body')};
  proxy_temp_path ${p('nginx-proxy')};
  fastcgi_temp_path ${p('nginx-fastcgi')};
  uwsgi_temp_path ${p('nginx-uwsgi')};
  scgi_temp_path ${p('nginx-scgi')};
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  upstream bench_upstream {
    server 127.0.0.1:${c.upstreamPort};
    keepalive 256;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:${c.listenPort} ssl;
    server_name ${c.upstreamName};
    ssl_certificate ${c.certPath};
    ssl_certificate_key ${c.keyPath};
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass https://bench_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header Authorization "Bearer ${c.secret}";
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate ${c.upstreamCaPath};
      proxy_ssl_name ${c.upstreamName};
      proxy_ssl_server_name on;
      proxy_ssl_protocols TLSv1.2 TLSv1.3;
      proxy_ssl_session_reuse on;
      proxy_buffering on;
      proxy_buffer_size 64k;
      proxy_buffers 4 64k;
    }
  }
}
`
}

/** nginx's argv for this config file: error log flag first, so start-up errors land in the run's dir too. */
export function nginxArgv(dir: string, confPath: string): string[] {
  return ['-e', join(dir, 'nginx-error.log'), '-p', dir, '-c', confPath]
}
