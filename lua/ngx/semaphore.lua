-- ngx.semaphore for OpenResty code on moonring (lua = { ngx = true }): moonring.semaphore.
return require "moonring.semaphore"
