import BlockIO
