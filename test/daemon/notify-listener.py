# A NOTIFY_SOCKET as systemd's manager has it: an AF_UNIX datagram socket. Every datagram received is
# appended to the log as one line (newlines inside a message become '|'), flushed at once.
import socket, sys
path, log = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
with open(log, 'a') as out:
    print('listening', file=out, flush=True)
    while True:
        data = s.recv(65536).decode('utf-8', 'replace')
        print(data.strip().replace('\n', '|'), file=out, flush=True)
