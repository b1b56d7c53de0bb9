"""The tool a utility runs on its archive (`meterseg compress`, `read`, `review`): no module here imports torch.

    photos.py       one photo, label or mask read from bytes (errors name the file)
    card.py         what a model carries besides weights: crop rule, accept rule, the model card
    model.py        the model behind every entry point: an exported folder (ONNX), or a torch checkpoint
    geometry.py     boxes and quads from a logit gap; the rectified strip
    recognisers.py  the exported CRNN and rapidocr behind one interface; the billing decode
    jpegcrop.py     the lossless JPEG crop (libjpeg-turbo, in process)
    pipeline.py     a photo loaded once; region -> crop -> quad -> strip -> reading; the row schemas
    stores.py       folders and fsspec URLs: whole-or-nothing writes, the lock, CSV rows, listings
    runner.py       one runner for compress and read: shards, resume, clashes, engines (threads, Ray)
    review.py       the self-contained review page, and merging a person's corrections
"""
