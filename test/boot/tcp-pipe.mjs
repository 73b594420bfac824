// QEMU's guestfwd runs this per guest TCP connection, the connection being stdin/stdout: carry it to
// 127.0.0.1:<port> on the host (argv[2]) and back. Loopback only, by construction.
import net from 'node:net';

const port = Number(process.argv[2]);
const socket = net.connect(port, '127.0.0.1');
process.stdin.pipe(socket);
socket.pipe(process.stdout);
process.stdin.on('end', () => socket.end());
socket.on('close', () => process.exit(0));
socket.on('error', (err) => {
  process.stderr.write(`tcp-pipe to 127.0.0.1:${port}: ${err.message}\n`);
  process.exit(1);
});
