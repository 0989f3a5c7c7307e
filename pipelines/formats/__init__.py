"""Reading files on disk: safe weight loading, LoRA key layouts, ControlNet shapes, ESRGAN
architectures, images and PNG metadata. The lowest layer of the engine: it imports nothing of
the store, the tasks or the studio."""
